"""POST /api/pull: run a pull in a worker thread and stream Ollama's progress objects.

Ollama streams `{"status": ...}` lines, with `digest`, `total` and `completed` while
downloading, and ends with `{"status": "success"}`. The pull (session.pull_model) is given a
progress callback; it may report either a dict (passed through) or (completed, total[,
label]) numbers.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator, Callable

from fastapi.responses import JSONResponse, StreamingResponse

from r1local.server.errors import ApiError, from_r1local, ollama_body

_END = object()


def _event(*args: Any, **kwargs: Any) -> dict:
    if args and isinstance(args[0], dict):
        return dict(args[0])
    if kwargs:
        return {"status": str(kwargs.get("status", "downloading")),
                **{k: v for k, v in kwargs.items() if k != "status"}}
    nums = [a for a in args if isinstance(a, (int, float)) and not isinstance(a, bool)]
    label = next((a for a in args if isinstance(a, str)), None)
    ev: dict[str, Any] = {"status": f"pulling {label}" if label else "downloading"}
    if len(nums) >= 2:
        ev["completed"], ev["total"] = int(nums[0]), int(nums[1])
    elif nums:
        ev["completed"] = int(nums[0])
    return ev


async def run_pull(pull: Callable[..., Any], ref: str, stream: bool) -> Any:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    def progress(*args: Any, **kwargs: Any) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, _event(*args, **kwargs))

    def work() -> Any:
        try:
            return pull(ref, progress=progress)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, _END)

    task = loop.run_in_executor(None, work)
    # wait for the first progress report (or the end): a bad tag or an unreachable hub
    # then fails with its own status before the 200 of a stream is sent
    first = await queue.get()
    if first is _END:
        try:
            await task
        except Exception as err:
            raise (err if isinstance(err, ApiError) else from_r1local(err)) from None
    head = [{"status": "pulling manifest"}, first]

    async def events() -> AsyncIterator[dict]:
        while True:
            item = head.pop(0) if head else await queue.get()
            if item is _END:
                break
            yield item
        try:
            stored = await task
        except Exception as err:  # R1LocalError: unknown tag, offline, disk full
            raise (err if isinstance(err, ApiError) else from_r1local(err)) from None
        # the pull verified every sha256 and wrote the manifest before returning
        yield {"status": "success", "model": getattr(stored, "name", ref)}

    if not stream:
        last: dict = {}
        async for ev in events():  # errors propagate as the HTTP status
            last = ev
        return JSONResponse(last)

    async def lines() -> AsyncIterator[bytes]:
        try:
            async for ev in events():
                yield (json.dumps(ev) + "\n").encode()
        except ApiError as err:
            yield (json.dumps(ollama_body(err)) + "\n").encode()

    return StreamingResponse(lines(), media_type="application/x-ndjson")
