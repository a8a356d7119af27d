# node-agent image: Debian's Python and bcc, the agent in a venv.
#
#   docker build -t <your-registry>/node-agent:0.1.0 .
#
# Debian 12 because bcc comes from Debian (python3-bpfcc): its libbcc is built against
# Debian's LLVM and libbpf, which PyPI cannot provide; the tests run against the same build.
#
# Kernel headers: bcc compiles the BPF program against the headers of the kernel it runs on.
# deploy/daemonset.yaml mounts the host's /lib/modules and /usr/src read-only under /host; the
# agent follows the /lib/modules/<release>/{build,source} symlinks inside that root and, for
# Debian's split header packages, merges both halves into a symlink tree in its cache
# (/var/cache/node-agent). Kernels built with CONFIG_IKHEADERS expose
# /sys/kernel/kheaders.tar.xz once the host has loaded the `kheaders` module. A node with none
# of these still gets a working sampler: the image carries Debian's own header tree
# (linux-headers-<arch> of this release, include/ and arch/<arch>/include only) under
# /usr/share/node-agent/kernel-headers, used last. The program reads no kernel structure,
# only UAPI definitions (struct bpf_perf_event_data, pt_regs, map and helper ABI), which the
# kernel keeps stable, so headers of another release compile a program that loads and
# samples correctly (README "The image").
# The agent runs as root: loading BPF programs needs uid 0 plus CAP_BPF and CAP_PERFMON
# (see the DaemonSet's securityContext for the full, minimal capability set).
FROM debian:bookworm-slim

# A failing apt-cache in a pipe must fail the build.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Versions are bookworm's; bump them together with the base image. The fallback kernel headers
# are unpacked from Debian's packages for this architecture (apt-get download + dpkg-deb, not
# installed: the package would pull gcc and kbuild), keeping only what bcc reads.
# The headers are unpacked in a scratch directory (cd, not WORKDIR) removed in the same step.
# hadolint ignore=DL3003
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3=3.11.2-1+b1 \
        python3-venv=3.11.2-1+b1 \
        python3-bpfcc=0.26.0+ds-1 \
    && scratch="$(mktemp -d)" && cd "$scratch" \
    && meta="linux-headers-$(dpkg --print-architecture)" \
    && build="$(apt-cache depends "$meta" | awk '$1 == "Depends:" && $2 ~ /^linux-headers-/ {print $2; exit}')" \
    && common="$(apt-cache depends "$build" | awk '$1 == "Depends:" && $2 ~ /^linux-headers-.*-common/ {print $2; exit}')" \
    && apt-get download "$build" "$common" \
    && for deb in ./*.deb; do dpkg-deb -x "$deb" unpacked; done \
    && karch="$(ls "unpacked/usr/src/$build/arch")" \
    && tree="/usr/share/node-agent/kernel-headers/$build" \
    && mkdir -p "$tree/arch/$karch" \
    && cp -a "unpacked/usr/src/$common/include" "$tree/include" \
    && cp -a "unpacked/usr/src/$common/arch/$karch/include" "$tree/arch/$karch/include" \
    && cp -a "unpacked/usr/src/$build/include/." "$tree/include/" \
    && cp -a "unpacked/usr/src/$build/arch/$karch/include/." "$tree/arch/$karch/include/" \
    && test -f "$tree/include/linux/kconfig.h" && test -f "$tree/include/generated/autoconf.h" \
    && cd / && rm -rf "$scratch" && rm -rf /var/lib/apt/lists/*

# Only Debian's bcc package is exposed to the venv (as scripts/setup.sh does), not all of
# dist-packages, so pip's pinned versions are the ones imported.
ENV VIRTUAL_ENV=/opt/node-agent
RUN python3 -m venv "$VIRTUAL_ENV" \
    && mkdir -p "$VIRTUAL_ENV/debian-bcc" \
    && ln -s /usr/lib/python3/dist-packages/bcc "$VIRTUAL_ENV/debian-bcc/bcc" \
    && echo "$VIRTUAL_ENV/debian-bcc" > "$VIRTUAL_ENV/lib/python3.11/site-packages/debian_bcc.pth"
ENV PATH="$VIRTUAL_ENV/bin:$PATH"

# Runtime dependencies first (a layer that survives source changes), pinned to versions that
# satisfy pyproject.toml; tests/unit/test_deploy.py checks that they still do.
# A build that needs a private package index passes its pip.conf (and that index's CA) as build
# secrets: mounted for this one step, never written to a layer. Without them pip uses PyPI.
RUN --mount=type=secret,id=pip.conf,required=false \
    --mount=type=secret,id=pip-ca.crt,required=false \
    PIP_CONFIG_FILE=/run/secrets/pip.conf pip install --no-cache-dir \
        pyelftools==0.33 \
        prometheus-client==0.26.0 \
        kubernetes==37.0.2 \
        rich==15.0.0 \
        protobuf==7.36.2

WORKDIR /src
COPY pyproject.toml README.md ./
COPY agent ./agent
# The BPF program ships inside the package (pyproject's package-data agent/sampling/bpf/*.c, a
# symlink to bpf/profile.bpf.c that the wheel build resolves), where agent/sampling/sampler.py
# looks when there is no checkout around it.
COPY bpf ./bpf
# --no-deps: everything was installed, pinned, above. pip writes the bytecode now; at run
# time the root filesystem is read-only (PYTHONDONTWRITEBYTECODE below).
RUN --mount=type=secret,id=pip.conf,required=false \
    --mount=type=secret,id=pip-ca.crt,required=false \
    PIP_CONFIG_FILE=/run/secrets/pip.conf pip install --no-cache-dir --no-deps . \
    && rm -rf /src
WORKDIR /

# node_agent_build_info{revision}: docker build --build-arg REVISION="$(git rev-parse --short=12 HEAD)" .
ARG REVISION=unknown
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NODE_AGENT_CACHE=/var/cache/node-agent \
    NODE_AGENT_REVISION=${REVISION}

EXPOSE 9464
ENTRYPOINT ["node-agent"]
CMD ["run"]
