#!/usr/bin/env python3
"""A TCP proxy on 127.0.0.1 that serves a registry at a fixed bandwidth.

Every byte from the server to the clients, over all connections together,
passes one token bucket (--mbit), as a shared link would. The bytes sent
so far are written to --count-file after every chunk, so a benchmark can
read what each command fetched. Used by `strata-bench lazy`; stops on
SIGTERM.
"""
import argparse
import asyncio
import os
import signal
import time


class Bucket:
    def __init__(self, rate):
        self.rate = rate            # bytes per second
        self.tokens = 0.0
        self.last = time.monotonic()
        self.lock = asyncio.Lock()

    async def take(self, n):
        async with self.lock:
            while True:
                now = time.monotonic()
                # At most 50 ms of burst: the link does not save up.
                self.tokens = min(self.rate * 0.05, self.tokens + (now - self.last) * self.rate)
                self.last = now
                if self.tokens >= n:
                    self.tokens -= n
                    return
                await asyncio.sleep((n - self.tokens) / self.rate)


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--listen", type=int, required=True)
    p.add_argument("--target", type=int, required=True)
    p.add_argument("--mbit", type=float, required=True)
    p.add_argument("--count-file", required=True)
    a = p.parse_args()
    bucket = Bucket(a.mbit * 1e6 / 8)
    sent = [0]

    def record():
        tmp = a.count_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(sent[0]))
        os.replace(tmp, a.count_file)

    async def pipe(reader, writer, limited):
        try:
            while True:
                data = await reader.read(16384)
                if not data:
                    break
                if limited:
                    await bucket.take(len(data))
                writer.write(data)
                await writer.drain()
                if limited:
                    sent[0] += len(data)
                    record()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            try:
                writer.close()
            except Exception:
                pass

    async def handle(creader, cwriter):
        try:
            sreader, swriter = await asyncio.open_connection("127.0.0.1", a.target)
        except OSError:
            cwriter.close()
            return
        await asyncio.gather(pipe(creader, swriter, False), pipe(sreader, cwriter, True))

    record()
    server = await asyncio.start_server(handle, "127.0.0.1", a.listen)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        await stop.wait()


asyncio.run(main())
