# The gateway's one hand-written Makefile.
#
#   make            build bin/gateway (installs missing Debian packages first)
#   make run        build and run gateway.lua.example on 127.0.0.1:8080
#   make test       build, then run every test; the last line is "N passed, N failed"
#   make asan       build bin/gateway-asan (ASan+UBSan+float-cast-overflow) and run the suite with it
#   make bench      the project's own benchmark (see bench/README.md)
#   make tls-audit  testssl.sh against a local TLS listener (installs testssl.sh)
#   make lint       clang-format --dry-run on src/
#
# Dependencies come from Debian packages (see vendor/README.md). llhttp ships as C
# sources in node-llhttp; the build copies them into vendor/llhttp (git-ignored)
# and compiles them with their own, quieter flags.

CC      ?= cc
BUILD   ?= build
BIN     ?= bin/gateway
SAN     ?=

PKGS    := luajit libuv openssl hiredis
DEPS_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
DEPS_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
CJSON_LIB   := /usr/lib/$(shell dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)/liblua5.1-cjson.a

# llhttp's strict mode: without it llhttp skips the byte after a bare CR ending a head.
LLHTTP_FLAGS := -DLLHTTP_STRICT_MODE=1
WARN    := -Wall -Wextra -Werror -Wno-unused-parameter -Wshadow -Wpointer-arith -Wstrict-prototypes
OPT     ?= -O2 -g
CFLAGS_ALL := -std=c11 -D_GNU_SOURCE $(OPT) $(WARN) $(SAN) -Isrc -Ivendor/llhttp -I$(BUILD) $(DEPS_CFLAGS)
# -Wl,-E exports gw_ffi_* so that LuaJIT's ffi.C finds them in the executable.
LDFLAGS_ALL := $(SAN) -Wl,-E
LIBS    := -Wl,--whole-archive $(CJSON_LIB) -Wl,--no-whole-archive $(DEPS_LIBS) -lcrypt -lm -ldl -lpthread

SRCS    := $(wildcard src/*.c)
OBJS    := $(patsubst src/%.c,$(BUILD)/%.o,$(SRCS)) $(BUILD)/lua_modules.o
LLHTTP_SRCS := vendor/llhttp/llhttp.c vendor/llhttp/api.c vendor/llhttp/http.c
LLHTTP_OBJS := $(patsubst vendor/llhttp/%.c,$(BUILD)/llhttp_%.o,$(LLHTTP_SRCS))
LUA_SRCS := $(shell find lua -name '*.lua' | sort)

QUIET_CC = @printf '    %-6s %s\n' CC $@;
QUIET_LD = @printf '    %-6s %s\n' LINK $@;
ifeq ($(V),1)
QUIET_CC =
QUIET_LD =
endif

.PHONY: all deps run test asan bench tls-audit lint clean check-deps
all: deps $(BIN)

# Install what is missing, only when something is missing (fresh Debian 12).
deps:
	@sh tools/install-deps.sh

vendor/llhttp/llhttp.h: | deps
	@mkdir -p vendor/llhttp
	cp /usr/share/llhttp/llhttp.c /usr/share/llhttp/api.c /usr/share/llhttp/http.c vendor/llhttp/
	cp /usr/share/include/llhttp/llhttp.h vendor/llhttp/

$(LLHTTP_SRCS): vendor/llhttp/llhttp.h

# Rebuild everything when the flags change (as Redis's persist-settings does).
$(BUILD)/flags: FORCE
	@mkdir -p $(BUILD)
	@echo '$(CFLAGS_ALL) $(LDFLAGS_ALL) $(LIBS) $(LLHTTP_FLAGS)' | cmp -s - $@ || echo '$(CFLAGS_ALL) $(LDFLAGS_ALL) $(LIBS) $(LLHTTP_FLAGS)' > $@
FORCE:

$(BUILD)/%.o: src/%.c $(BUILD)/flags vendor/llhttp/llhttp.h
	$(QUIET_CC)$(CC) $(CFLAGS_ALL) -MMD -MP -c $< -o $@

$(BUILD)/llhttp_%.o: vendor/llhttp/%.c $(BUILD)/flags
	$(QUIET_CC)$(CC) -std=c11 $(OPT) $(SAN) $(LLHTTP_FLAGS) -w -Ivendor/llhttp -c $< -o $@

# lua/ is compiled into the binary, so `require "gateway"` never finds a user's file.
$(BUILD)/embed: tools/embed.c
	@mkdir -p $(BUILD)
	$(QUIET_CC)$(CC) -std=c11 -O1 $(WARN) $< -o $@

$(BUILD)/lua_modules.c: $(BUILD)/embed $(LUA_SRCS)
	@$(BUILD)/embed $(LUA_SRCS) > $@.tmp && mv $@.tmp $@

$(BUILD)/lua_modules.o: $(BUILD)/lua_modules.c
	$(QUIET_CC)$(CC) -std=c11 $(OPT) -c $< -o $@

$(BIN): $(OBJS) $(LLHTTP_OBJS)
	@mkdir -p $(dir $@)
	$(QUIET_LD)$(CC) $(LDFLAGS_ALL) $^ $(LIBS) -o $@

-include $(wildcard $(BUILD)/*.d)

run: all
	$(BIN) -c gateway.lua.example

test: all
	@GW_BIN=$(BIN) python3 spec/run.py

# float-cast-overflow is not part of "undefined" in GCC: a double out of an
# integer type's range (1e300 seconds as milliseconds) is caught only with it.
asan:
	$(MAKE) BUILD=build-asan BIN=bin/gateway-asan OPT='-O1 -g -fno-omit-frame-pointer' \
	  SAN='-fsanitize=address,undefined,float-cast-overflow -fno-sanitize-recover=undefined,float-cast-overflow' \
	  bin/gateway-asan
	@GW_BIN=bin/gateway-asan ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 python3 spec/run.py

bench: all
	@bash bench/run.sh

tls-audit: all
	@bash tools/tls-audit.sh

lint:
	clang-format --dry-run --Werror src/*.c src/*.h

clean:
	rm -rf build build-asan bin vendor/llhttp
