# mod_passenger: build, test and serve. `make help` lists the targets.
PROFILE ?= release
CARGO_PROFILE_FLAG := $(if $(filter release,$(PROFILE)),--release,)
TARGET_DIR ?= $(CURDIR)/target
export CARGO_TARGET_DIR := $(TARGET_DIR)
OUT := $(TARGET_DIR)/$(PROFILE)
APXS ?= apxs
LIBEXECDIR := $(shell $(APXS) -q LIBEXECDIR 2>/dev/null)
PREFIX ?= /usr/lib/mod_passenger

.PHONY: help build module test serve stop install fmt lint bench

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

build: module ## build mod_passenger.so, passenger-agent, passenger-status and flying-passenger

module: ## link mod_passenger.so from the Rust static library and the C shim
	cargo build $(CARGO_PROFILE_FLAG) --lib --bins
	cc -shared -o $(OUT)/mod_passenger.so.tmp \
	    -Wl,--undefined=passenger_module $(OUT)/libmod_passenger.a \
	    -Wl,--version-script=mod_passenger/exports.map -Wl,--gc-sections \
	    -lpthread -ldl -lm -lgcc_s -lc
	mv $(OUT)/mod_passenger.so.tmp $(OUT)/mod_passenger.so

test: ## run every test: unit, integration, loaders, the soak client and end-to-end through Apache
	$(MAKE) module PROFILE=debug
	/usr/bin/python3 -m unittest discover -s src/loaders -p 'test_*.py'
	ruby src/loaders/test_rack_loader.rb
	node --test src/loaders/test_node_loader.js
	cargo test --manifest-path bench/soak-client/Cargo.toml
	cargo test --no-fail-fast

serve: module ## serve the example apps in conf/examples through Apache on 127.0.0.1:8080
	conf/serve.sh $(OUT)

stop: ## stop the Apache started by `make serve`
	conf/serve.sh --stop

install: module ## install the module, the agent, passenger-status, flying-passenger and the a2enmod files into the system Apache
	install -D -m 0755 $(OUT)/passenger-agent $(DESTDIR)$(PREFIX)/passenger-agent
	install -D -m 0755 $(OUT)/passenger-status $(DESTDIR)/usr/sbin/passenger-status
	install -D -m 0755 $(OUT)/flying-passenger $(DESTDIR)/usr/sbin/flying-passenger
	install -D -m 0644 $(OUT)/mod_passenger.so $(DESTDIR)$(LIBEXECDIR)/mod_passenger.so
	install -D -m 0644 conf/passenger.load $(DESTDIR)/etc/apache2/mods-available/passenger.load
	install -D -m 0644 conf/passenger.conf $(DESTDIR)/etc/apache2/mods-available/passenger.conf

fmt: ## format the Rust code
	cargo fmt

lint: ## formatting and clippy checks
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings

bench: ## benchmark against Passenger, mod_wsgi and static files (SOAK=1: the soak run; BENCH_QUICK=1: short)
	bench/run.sh
