# Everything a fresh Debian machine needs, in two commands:
#   make demo   builds ACIfile.example into example.aci
#   make test   runs the whole test suite
# Each creates .venv and installs what it needs (system packages too, when root).

PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || command -v python3)
VENV   ?= .venv
TOOLS  ?= .tools
APT_PACKAGES = pigz busybox-static gnupg mmdebstrap python3-venv uidmap nginx python3-seccomp gcc libc6-dev runc openssh-client buildah skopeo umoci docker-registry apache2-utils openssl oci-image-tool podman
ACTOOL = $(TOOLS)/usr/bin/actool

export PATH := $(CURDIR)/$(VENV)/bin:$(CURDIR)/$(TOOLS)/usr/bin:$(PATH)

.PHONY: demo test system-deps venv bench clean

demo: system-deps venv
	cp /bin/busybox busybox
	$(VENV)/bin/acbuild build -f ACIfile.example -o example.aci
	$(VENV)/bin/acbuild validate example.aci

test: system-deps venv
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# System packages (root only) and actool alone: `apt-get install appc-spec` would pull
# in golang-go (~450 MB), so take the 7 MB binary out of the package instead.
system-deps: $(ACTOOL)
	@if [ "$$(id -u)" = 0 ]; then \
	  missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	  if [ -n "$$missing" ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  fi; \
	else echo "not root: assuming $(APT_PACKAGES) are installed"; fi

$(ACTOOL):
	@mkdir -p $(TOOLS)/deb
	@if [ "$$(id -u)" = 0 ] && ! apt-cache show appc-spec >/dev/null 2>&1; then apt-get update -qq; fi
	cd $(TOOLS)/deb && apt-get download appc-spec
	dpkg-deb -x $(TOOLS)/deb/appc-spec_*.deb $(TOOLS)
	$(ACTOOL) version

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

bench: system-deps venv $(ACTOOL)
	$(VENV)/bin/python benchmarks/bench_write.py
	$(VENV)/bin/python benchmarks/bench_cache.py
	$(VENV)/bin/python benchmarks/bench_startup.py

clean:
	rm -rf $(VENV) $(TOOLS) example.aci example.aci.asc
