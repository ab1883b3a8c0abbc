# Gantry — build, run, test and benchmark. `make run` and `make test` install what is missing.
SWIFT ?= swift
DEBIAN_PACKAGES := libgit2-dev libyaml-dev libsqlite3-dev libre2-dev g++ pkg-config openssh-client openssl git python3 curl redis-server postgresql iproute2 nftables util-linux
STATE ?= .gantry

.PHONY: deps pydeps build run test bench fuzz-cel fuzz api-fuzz openapi clean

## Install the Debian packages Gantry needs, only when something is missing.
deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

## The Python packages the tests drive Gantry with: the MCP client, and the OpenAPI answer check.
PYTHON_PACKAGES := mcp==2.3.0 jsonschema pyyaml kubernetes-validate
pydeps:
	@python3 -c "import jsonschema, yaml, kubernetes_validate, importlib.metadata as m; assert m.version('mcp') == '2.3.0'" 2>/dev/null \
	  || python3 -m pip install -q $(PYTHON_PACKAGES)

build: deps
	$(SWIFT) build --product gantry

## The demo: a configuration repository made from example-repo/, the local driver, SQLite state.
run: build
	$(SWIFT) run gantry demo --state $(STATE)

test: deps pydeps
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build --parallel --num-workers 2

bench: deps
	python3 -m pip install -q cel-expr-python || echo "cel-expr-python unavailable: the CEL baseline is skipped"
	$(SWIFT) build -c release
	.build/release/GantryBench .build/release/gantry

## Differential fuzzing of the CEL evaluator against cel-expr-python (Google's C++ CEL, from PyPI).
SEED ?= 1
COUNT ?= 2000
fuzz-cel: build
	python3 -m pip install -q cel-expr-python
	python3 scripts/cel_fuzz.py .build/debug/gantry $(COUNT) $(SEED)

## Coverage-guided fuzzing (libFuzzer + AddressSanitizer) of the YAML/spec decoders, CEL, audit notes,
## SSHSIG and allowed_signers, built in .build-fuzz/. RUNS=1000000 TARGETS="cel spec" (docs/fuzzing.md).
fuzz: deps
	RUNS=$(or $(RUNS),100000) Fuzz/fuzz.sh

## schemathesis (PyPI) against a running Gantry: every answer documented and valid, no 5xx (EXAMPLES=30).
api-fuzz: build
	python3 -m pip install -q schemathesis
	scripts/api_fuzz.sh

## docs/openapi.yaml into the source the API serves it from.
openapi:
	python3 scripts/openapi_swift.py

clean:
	rm -rf .build $(STATE)
