# summarize.awk - runs.csv (written by run.sh) -> Markdown tables.
#
#   awk -F, -v pairs="gw-hello:origin gw-routes10k:gw-routes10" -v ref_o=origin \
#       -v ref_a=a-nginx-proxy -v cc=0 -v sc=1 -f summarize.awk runs.csv
#
# Medians over rounds; a "ratio" is median / median; a "paired" ratio is the
# median (min-max) over rounds of target / reference within the same round,
# which cancels slow drift of the machine between rounds.
# vars: pairs (space-separated NUM:DEN target names; absent ones are skipped),
#   ref_o (origin target), ref_a (anchor (a), for the anchor table), cc/sc (cpu ids)
# columns: 1 round,2 pos,3 target,4 rps,5 p50_us,6 p90_us,7 p99_us,8 max_us,
#   9 requests (wrk),10 non2xx,11 sock_errors,12 cpuC_busy,13 cpuS_busy,
#   14 steal_pct (both cpus added),
#   15 cpu_us_per_req: CPU (user+sys, /proc) of the target's own process tree
#      divided by the requests it served (empty when run.sh did not start it),
#   16 served: that divisor (origin: its stub_status count; others: wrk's count),
#   17 origin_us_per_req: both origins' CPU / client requests,
#   18 syscall_us: cost of one syscall on the server cpu just before the run,
#   19 origin_calls_per_req: origin requests served per client request,
#   20 origin_us_per_call: origin CPU per origin request, same run (empty if none),
#   21/22 other_cpuC_pct/other_cpuS_pct: share of the client/server core used by
#      processes other than wrk/our servers during the run (empty if unpinned)
#   23 kernel_us_per_req: the system-time part of column 15
# Flags: runs where the server core was under 90% busy (the client side,
# not the server, limited it), and runs where other processes took over 5% of either core.
#
# "gateway cost in origin calls" = gateway CPU per client request divided by
# the origin CPU per origin request measured in the same run: the origin does
# the same fixed job in every run, so this cancels some of the VM's speed swings.

function med(arr, n,   i, j, x) {  # sorts arr[1..n] in place, returns median
  for (i = 2; i <= n; i++) { x = arr[i]; for (j = i - 1; j >= 1 && arr[j] > x; j--) arr[j + 1] = arr[j]; arr[j + 1] = x }
  return (n % 2) ? arr[(n + 1) / 2] : (arr[n / 2] + arr[n / 2 + 1]) / 2
}
function median(t, k,   n, i, a, x) {  # over the runs where column k was filled
  n = 0
  for (i = 1; i <= cnt[t]; i++) if (((t, k, i) in val) && val[t, k, i] != "") a[++n] = val[t, k, i] + 0
  if (n == 0) { lo[t, k] = hi[t, k] = ""; return "" }
  x = med(a, n); lo[t, k] = a[1]; hi[t, k] = a[n]
  return x
}
function paired(t, ref, k,   i, n, r, a, x) {  # per-round ratio of column k, t / ref
  n = 0
  for (i = 1; i <= nr; i++) {
    r = rounds[i]
    if (((t, k, "r", r) in byr) && ((ref, k, "r", r) in byr) && byr[t, k, "r", r] != "" && byr[ref, k, "r", r] > 0)
      a[++n] = byr[t, k, "r", r] / byr[ref, k, "r", r]
  }
  if (n == 0) return "-"
  x = med(a, n)
  return (n == 1) ? sprintf("%.2f", x) : sprintf("%.2f (%.2f-%.2f)", x, a[1], a[n])
}
function ms(us) { return sprintf("%.2f", us / 1000) }
function ratio(x, y) { return (x != "" && y != "" && y > 0) ? sprintf("%.2f", x / y) : "-" }
function rng(t, k, fmt) {
  return (m[t, k] == "") ? "-" : sprintf(fmt " (" fmt "-" fmt ")", m[t, k], lo[t, k], hi[t, k])
}

NR == 1 { next }
{
  t = $3
  if (!(t in cnt)) { order[++nt] = t; cnt[t] = 0 }
  if (!($1 in seenr)) { seenr[$1] = 1; rounds[++nr] = $1 }
  n = ++cnt[t]
  val[t, "rps", n] = $4; val[t, "p50", n] = $5; val[t, "p99", n] = $7
  val[t, "cc", n] = $12; val[t, "sc", n] = $13
  val[t, "cpu", n] = $15; val[t, "cr", n] = $19; val[t, "oc", n] = $20
  if ($15 != "" && $20 != "" && $20 > 0 && $19 > 0) val[t, "nm", n] = $15 / $20
  byr[t, "rps", "r", $1] = $4; byr[t, "cpu", "r", $1] = $15
  byr[t, "p50", "r", $1] = $5; byr[t, "p99", "r", $1] = $7
  val[t, "fc", n] = $21; val[t, "fs", n] = $22; val[t, "kern", n] = $23
  if ($13 + 0 < 90) unsat[t]++
  if ($21 + 0 > 5 || $22 + 0 > 5) busy[t]++
  err[t] += $10 + $11
  if ($18 != "") sc_all[++nsc] = $18 + 0
}
END {
  for (i = 1; i <= nt; i++) {
    t = order[i]
    nk = split("rps p50 p99 cc sc cpu cr oc nm fc fs kern", ks, " ")
    for (j = 1; j <= nk; j++) m[t, ks[j]] = median(t, ks[j])
    for (j = 1; j <= cnt[t]; j++)
      if (m[t, "oc"] != "" && val[t, "oc", j] != "" && val[t, "oc", j] > 1.2 * m[t, "oc"]) slow[t]++
  }

  print "| target | req/s (median) | req/s min-max (spread) | p50 ms (min-max) | p99 ms (min-max) | server CPU µs/req (min-max) | of which kernel µs/req | cpu" cc " / cpu" sc " busy % | other processes on cpu" cc " / cpu" sc " % (max) | flagged runs: cpu" sc " < 90% / others > 5% | errors |"
  print "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  for (i = 1; i <= nt; i++) {
    t = order[i]
    printf "| %s | %.0f | %.0f-%.0f (%.0f%%) | %s (%s-%s) | %s (%s-%s) | %s | %s | %.0f / %.0f | %s | %d / %d of %d | %d |\n", t,
      m[t, "rps"], lo[t, "rps"], hi[t, "rps"], m[t, "rps"] ? 100 * (hi[t, "rps"] - lo[t, "rps"]) / m[t, "rps"] : 0,
      ms(m[t, "p50"]), ms(lo[t, "p50"]), ms(hi[t, "p50"]),
      ms(m[t, "p99"]), ms(lo[t, "p99"]), ms(hi[t, "p99"]),
      rng(t, "cpu", "%.1f"), (m[t, "kern"] == "") ? "-" : sprintf("%.1f", m[t, "kern"]), m[t, "cc"], m[t, "sc"],
      (m[t, "fc"] == "") ? "-" : sprintf("%.0f / %.0f (%.0f / %.0f)", m[t, "fc"], m[t, "fs"], hi[t, "fc"], hi[t, "fs"]),
      unsat[t], busy[t], cnt[t], err[t]
  }

  np = split(pairs, pr, " "); shown = 0
  for (i = 1; i <= np; i++) {
    split(pr[i], ab, ":"); a = ab[1]; b = ab[2]
    if (!((a in cnt) && (b in cnt))) continue
    if (!shown++) {
      print ""
      print "Ratios from this run. CPU/req: lower is better; req/s: higher is better. \"paired\" = median (min-max) over rounds of the ratio within one round."
      print ""
      print "| ratio | server CPU µs/req | CPU/req paired per round | req/s | req/s paired per round | p50 | p99 |"
      print "|---|---:|---:|---:|---:|---:|---:|"
    }
    printf "| %s ÷ %s | %s | %s | %s | %s | %s | %s |\n", a, b,
      ratio(m[a, "cpu"], m[b, "cpu"]), paired(a, b, "cpu"),
      ratio(m[a, "rps"], m[b, "rps"]), paired(a, b, "rps"),
      ratio(m[a, "p50"], m[b, "p50"]), ratio(m[a, "p99"], m[b, "p99"])
  }

  shown = 0
  for (i = 1; i <= nt; i++) {
    t = order[i]
    if (t == ref_o || m[t, "cr"] == "" || m[t, "cr"] < 0.5) continue   # does not proxy
    if (!shown++) {
      print ""
      print "Upstream calls (targets that call the origins). Host slow = origin CPU per call > 1.2× this target's median."
      print ""
      print "| target | origin calls/req | origin CPU µs/call | gateway cost in origin calls (min-max) | runs host slow |"
      print "|---|---:|---:|---:|---:|"
    }
    printf "| %s | %.2f | %.2f | %s | %d of %d |\n", t, m[t, "cr"], m[t, "oc"], rng(t, "nm", "%.2f"), slow[t], cnt[t]
  }

  if (ref_a in cnt) {
    print ""
    print "Ratios to origin and to anchor (a) " ref_a " (median / median)."
    print ""
    print "| target | req/s / origin | req/s / (a) | req/s / (a) paired per round | p50 / (a) | p99 / (a) | CPU/req / (a) | CPU/req / (a) paired per round | gw cost in origin calls / (a) |"
    print "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    ro = (ref_o in cnt)
    for (i = 1; i <= nt; i++) {
      t = order[i]
      printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", t,
        ro ? ratio(m[t, "rps"], m[ref_o, "rps"]) : "-", ratio(m[t, "rps"], m[ref_a, "rps"]),
        paired(t, ref_a, "rps"), ratio(m[t, "p50"], m[ref_a, "p50"]), ratio(m[t, "p99"], m[ref_a, "p99"]),
        (t == ref_o) ? "-" : ratio(m[t, "cpu"], m[ref_a, "cpu"]), (t == ref_o) ? "-" : paired(t, ref_a, "cpu"),
        ratio(m[t, "nm"], m[ref_a, "nm"])
    }
  }

  nb = 0; nall = 0
  for (i = 1; i <= nt; i++) { nb += busy[order[i]]; nall += cnt[order[i]] }
  if (nb) printf "\nWARNING: other processes took over 5%% of a core in %d of %d runs (column \"other processes\"): this machine was not quiet; rerun before quoting req/s.\n", nb, nall

  if (nsc) {
    x = med(sc_all, nsc)
    printf "\nDrift gauge: one syscall on the server cpu cost %.2f µs (median of %d runs, min-max %.2f-%.2f) just before each run.\n", x, nsc, sc_all[1], sc_all[nsc]
  }
}
