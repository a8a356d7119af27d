# node-agent image: Debian's Python and bcc, the agent in a venv.
#
#   docker build -t <your-registry>/node-agent:0.1.0 .
#
# Debian 12 because bcc comes from Debian (python3-bpfcc): its libbcc is built against
# Debian's LLVM and libbpf, which PyPI cannot provide; the tests run against the same build.
#
# Kernel headers are NOT in the image: bcc compiles the BPF program against the headers of
# the kernel it runs on, which differs per node. deploy/daemonset.yaml mounts the host's
# /lib/modules and /usr/src read-only under /host; the agent follows the
# /lib/modules/<release>/{build,source} symlinks inside that root and, for Debian's split
# header packages, merges both halves into a symlink tree in its cache (/var/cache/node-agent).
# Alternatives: kernels built with CONFIG_IKHEADERS expose /sys/kernel/kheaders.tar.xz once
# the host has loaded the `kheaders` module, and bcc unpacks it into /tmp; or, for a uniform
# fleet, derive an image that installs linux-headers-<release> and pass --kernel-headers.
#
# The agent runs as root: loading BPF programs needs uid 0 plus CAP_BPF and CAP_PERFMON
# (see the DaemonSet's securityContext for the full, minimal capability set).
FROM debian:bookworm-slim

# Versions are bookworm's; bump them together with the base image.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3=3.11.2-1+b1 \
        python3-venv=3.11.2-1+b1 \
        python3-bpfcc=0.26.0+ds-1 \
    && rm -rf /var/lib/apt/lists/*

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
RUN pip install --no-cache-dir \
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
RUN pip install --no-cache-dir --no-deps . \
    && rm -rf /src
WORKDIR /

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NODE_AGENT_CACHE=/var/cache/node-agent

EXPOSE 9464
ENTRYPOINT ["node-agent"]
CMD ["run"]
