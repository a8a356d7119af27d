"""/profiles is built when asked for, once per window, and never for a container nobody asks about."""

from __future__ import annotations

import threading

from agent.commands.daemon import LazyProfiles


def test_profiles_are_built_on_request_once_per_window() -> None:
    built: list[str] = []

    def builder(name: str) -> bytes:
        built.append(name)
        return name.encode()

    store = LazyProfiles()
    store.publish({("shop", "web", "app"): lambda: builder("web"), ("shop", "db", "pg"): lambda: builder("db")})
    assert store.available() == [("shop", "db", "pg"), ("shop", "web", "app")]
    assert built == []  # publishing a window encodes nothing
    threads = [threading.Thread(target=store.get, args=(("shop", "web", "app"),)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.get(("shop", "web", "app")) == b"web"
    assert built == ["web"]  # eight concurrent requests, one build; the other container never built
    assert store.get(("x", "y", "z")) is None
    store.publish({("shop", "web", "app"): lambda: builder("web2")})  # the next window
    assert store.get(("shop", "web", "app")) == b"web2" and built == ["web", "web2"]


def test_a_failed_build_is_remembered_for_the_window() -> None:
    calls = []

    def failing() -> bytes | None:
        calls.append(1)
        return None  # what _build_profile returns after logging and counting a failure

    store = LazyProfiles()
    store.publish({("a", "b", "c"): failing})
    assert store.get(("a", "b", "c")) is None and store.get(("a", "b", "c")) is None
    assert len(calls) == 1
