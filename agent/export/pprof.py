"""Write pprof profiles (profile.proto, gzipped) that `go tool pprof` reads.

The message classes are built at import time from a descriptor written here
with protobuf's descriptor API, following the published profile.proto field
numbers — so no protoc step and no generated code to keep in sync.
"""

from __future__ import annotations

import gzip
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from agent.analysis.attribution import ProcessProfile
from agent.export.safe import utf8
from agent.gobinary.pclntab import Frame

_T = descriptor_pb2.FieldDescriptorProto
_MESSAGES: dict[str, list[tuple[str, int, int, int, str]]] = {
    # name: [(field, number, type, label, type_name)]
    "Profile": [
        ("sample_type", 1, _T.TYPE_MESSAGE, _T.LABEL_REPEATED, "ValueType"),
        ("sample", 2, _T.TYPE_MESSAGE, _T.LABEL_REPEATED, "Sample"),
        ("mapping", 3, _T.TYPE_MESSAGE, _T.LABEL_REPEATED, "Mapping"),
        ("location", 4, _T.TYPE_MESSAGE, _T.LABEL_REPEATED, "Location"),
        ("function", 5, _T.TYPE_MESSAGE, _T.LABEL_REPEATED, "Function"),
        ("string_table", 6, _T.TYPE_STRING, _T.LABEL_REPEATED, ""),
        ("drop_frames", 7, _T.TYPE_INT64, _T.LABEL_OPTIONAL, ""),
        ("keep_frames", 8, _T.TYPE_INT64, _T.LABEL_OPTIONAL, ""),
        ("time_nanos", 9, _T.TYPE_INT64, _T.LABEL_OPTIONAL, ""),
        ("duration_nanos", 10, _T.TYPE_INT64, _T.LABEL_OPTIONAL, ""),
        ("period_type", 11, _T.TYPE_MESSAGE, _T.LABEL_OPTIONAL, "ValueType"),
        ("period", 12, _T.TYPE_INT64, _T.LABEL_OPTIONAL, ""),
        ("comment", 13, _T.TYPE_INT64, _T.LABEL_REPEATED, ""),
        ("default_sample_type", 14, _T.TYPE_INT64, _T.LABEL_OPTIONAL, ""),
    ],
    "ValueType": [
        ("type", 1, _T.TYPE_INT64, _T.LABEL_OPTIONAL, ""),
        ("unit", 2, _T.TYPE_INT64, _T.LABEL_OPTIONAL, ""),
    ],
    "Sample": [
        ("location_id", 1, _T.TYPE_UINT64, _T.LABEL_REPEATED, ""),
        ("value", 2, _T.TYPE_INT64, _T.LABEL_REPEATED, ""),
        ("label", 3, _T.TYPE_MESSAGE, _T.LABEL_REPEATED, "Label"),
    ],
    "Label": [
        ("key", 1, _T.TYPE_INT64, _T.LABEL_OPTIONAL, ""),
        ("str", 2, _T.TYPE_INT64, _T.LABEL_OPTIONAL, ""),
        ("num", 3, _T.TYPE_INT64, _T.LABEL_OPTIONAL, ""),
        ("num_unit", 4, _T.TYPE_INT64, _T.LABEL_OPTIONAL, ""),
    ],
    "Mapping": [
        ("id", 1, _T.TYPE_UINT64, _T.LABEL_OPTIONAL, ""),
        ("memory_start", 2, _T.TYPE_UINT64, _T.LABEL_OPTIONAL, ""),
        ("memory_limit", 3, _T.TYPE_UINT64, _T.LABEL_OPTIONAL, ""),
        ("file_offset", 4, _T.TYPE_UINT64, _T.LABEL_OPTIONAL, ""),
        ("filename", 5, _T.TYPE_INT64, _T.LABEL_OPTIONAL, ""),
        ("build_id", 6, _T.TYPE_INT64, _T.LABEL_OPTIONAL, ""),
        ("has_functions", 7, _T.TYPE_BOOL, _T.LABEL_OPTIONAL, ""),
        ("has_filenames", 8, _T.TYPE_BOOL, _T.LABEL_OPTIONAL, ""),
        ("has_line_numbers", 9, _T.TYPE_BOOL, _T.LABEL_OPTIONAL, ""),
        ("has_inline_frames", 10, _T.TYPE_BOOL, _T.LABEL_OPTIONAL, ""),
    ],
    "Location": [
        ("id", 1, _T.TYPE_UINT64, _T.LABEL_OPTIONAL, ""),
        ("mapping_id", 2, _T.TYPE_UINT64, _T.LABEL_OPTIONAL, ""),
        ("address", 3, _T.TYPE_UINT64, _T.LABEL_OPTIONAL, ""),
        ("line", 4, _T.TYPE_MESSAGE, _T.LABEL_REPEATED, "Line"),
        ("is_folded", 5, _T.TYPE_BOOL, _T.LABEL_OPTIONAL, ""),
    ],
    "Line": [
        ("function_id", 1, _T.TYPE_UINT64, _T.LABEL_OPTIONAL, ""),
        ("line", 2, _T.TYPE_INT64, _T.LABEL_OPTIONAL, ""),
    ],
    "Function": [
        ("id", 1, _T.TYPE_UINT64, _T.LABEL_OPTIONAL, ""),
        ("name", 2, _T.TYPE_INT64, _T.LABEL_OPTIONAL, ""),
        ("system_name", 3, _T.TYPE_INT64, _T.LABEL_OPTIONAL, ""),
        ("filename", 4, _T.TYPE_INT64, _T.LABEL_OPTIONAL, ""),
        ("start_line", 5, _T.TYPE_INT64, _T.LABEL_OPTIONAL, ""),
    ],
}


def _build_classes() -> dict[str, Any]:
    fdp = descriptor_pb2.FileDescriptorProto(
        name="node_agent_profile.proto", package="perftools.profiles", syntax="proto3"
    )
    for name, fields in _MESSAGES.items():
        msg = fdp.message_type.add(name=name)
        for fname, number, ftype, label, type_name in fields:
            f = msg.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = f".perftools.profiles.{type_name}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"perftools.profiles.{name}"))
        for name in _MESSAGES
    }


_CLASSES = _build_classes()


class _Strings:
    def __init__(self) -> None:
        self.table: list[str] = [""]
        self._index: dict[str, int] = {"": 0}

    def __call__(self, s: str) -> int:
        s = utf8(s)  # protobuf strings must be UTF-8; a tenant's path or name may not be
        i = self._index.get(s)
        if i is None:
            i = len(self.table)
            self.table.append(s)
            self._index[s] = i
        return i


@dataclass(frozen=True)
class ProfilePart:
    """The samples of one binary: a profile may hold several (a container running two programs)."""

    profile: ProcessProfile
    binary_path: str = ""
    build_id: str = ""


def build_profile(
    parts: Sequence[ProfilePart],
    *,
    period_ns: int,
    duration_ns: int,
    labels: Mapping[str, str] | None = None,
    time_ns: int | None = None,
) -> Any:
    """A Profile message: samples/count and cpu/nanoseconds, like Go's CPU profiles.

    Each part is its own Mapping, and its Locations are keyed by (mapping, address):
    link-time addresses of two binaries overlap, so they must not share a Location.
    """
    strings = _Strings()
    p = _CLASSES["Profile"]()
    p.sample_type.add(type=strings("samples"), unit=strings("count"))
    p.sample_type.add(type=strings("cpu"), unit=strings("nanoseconds"))
    p.period_type.type = strings("cpu")
    p.period_type.unit = strings("nanoseconds")
    p.period = period_ns
    p.duration_nanos = duration_ns
    p.time_nanos = time_ns if time_ns is not None else time.time_ns()
    functions: dict[tuple[str, str], int] = {}
    location_ids: dict[tuple[int, int], int] = {}

    def function_id(frame: Frame) -> int:
        key = (frame.function, frame.file)
        fid = functions.get(key)
        if fid is None:
            fid = len(functions) + 1
            functions[key] = fid
            p.function.add(
                id=fid, name=strings(frame.function), system_name=strings(frame.function), filename=strings(frame.file)
            )
        return fid

    def location_id(mapping: int, prof: ProcessProfile, pc: int) -> int:
        lid = location_ids.get((mapping, pc))
        if lid is None:
            lid = len(location_ids) + 1
            location_ids[(mapping, pc)] = lid
            loc = p.location.add(id=lid, mapping_id=mapping, address=pc)
            for frame in prof.locations.get(pc) or (Frame("[unknown]", "", 0),):
                loc.line.add(function_id=function_id(frame), line=max(frame.line, 0))
        return lid

    label_pairs = [(strings(k), strings(v)) for k, v in (labels or {}).items() if v]
    for mapping, part in enumerate(parts, 1):
        p.mapping.add(
            id=mapping,
            memory_start=0,
            memory_limit=0xFFFFFFFFFFFFFFFF,
            filename=strings(part.binary_path),
            build_id=strings(part.build_id),
            has_functions=True,
            has_filenames=True,
            has_line_numbers=True,
            has_inline_frames=True,
        )
        prof = part.profile.resolve()
        for stack, count in sorted(prof.stacks.items(), key=lambda kv: -kv[1]):
            ids = [location_id(mapping, prof, pc) for pc in stack]
            sample = p.sample.add(location_id=ids, value=[count, count * period_ns])
            for k, v in label_pairs:
                sample.label.add(key=k, str=v)
    p.string_table.extend(strings.table)
    return p


GZIP_LEVEL = 1  # profiles are mostly varints and repeated strings: level 1 gets most of 9's ratio at a tenth the CPU


def gzipped(profile: Any) -> bytes:
    """The wire form of a profile: gzip (as `go tool pprof` expects), fast level."""
    return gzip.compress(profile.SerializeToString(), compresslevel=GZIP_LEVEL, mtime=0)


def write_profile(path: str, profile: Any) -> None:
    with open(path, "wb") as f:
        f.write(gzipped(profile))


def parse_profile(data: bytes) -> Any:
    """Read a (gzipped or raw) profile back: for tests and tooling."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    p = _CLASSES["Profile"]()
    p.ParseFromString(data)
    return p
