"""node-agent: finds Go workloads whose GOMAXPROCS does not match their CPU quota."""

__version__ = "0.1.0"
