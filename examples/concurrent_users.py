#!/usr/bin/python3
"""concurrent_users.py -- the seed's Alice/Bob/Carol demo, over HTTP against `make run`.

Three users, each with their own API key, create their own LoRA adapter and train it on their
own sentence for --steps steps (lora.forward_backward + lora.optim_step, each a future polled
through /retrieve_future), all at the same time; each user's loss is printed as it falls (and
a long forward_backward's PROGRESS, examples done of total, while it runs), and
each samples its sentence back (greedy) at the end. Then the same three users run again one
after another, and the two wall times are compared. Adapters are deleted at the end.

    make run                                   # in one terminal
    examples/concurrent_users.py [--steps 10] [--url http://127.0.0.1:8000]

Keys come from CELERIAC_API_KEYS ("alice:KEY1,bob:KEY2,carol:KEY3"), as for the server;
without it the development keys that `make run` sets up are used.
"""

import argparse
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from celeriac_client import ApiError, Client, api_keys  # noqa: E402

TEXTS = {
    "alice": "Alice likes green tea with honey in the morning.",
    "bob": "Bob repairs old bicycles in his small garage.",
    "carol": "Carol plays the cello every Sunday afternoon.",
    "dave": "Dave grows tomatoes and celeriac on his balcony.",
}
_print_lock = threading.Lock()


def say(user, text):
    with _print_lock:
        print(f"[{user:>5}] {text}", flush=True)


def progress_printer(user, step, steps):
    """An on_progress for Client.wait: prints a running task's PROGRESS ({"done", "total"},
    what the worker stores while a long forward_backward runs) when it moves."""
    last = [None]

    def show(p):
        done, total = p.get("done"), p.get("total")
        if done is not None and done != last[0]:
            last[0] = done
            say(user, f"step {step:>2}/{steps}  fwdbwd running: {done}/{total} examples")
    return show


def run_user(client, user, steps, lr, batch, quiet=False):
    """One user's session; returns (first loss, last loss, sample text, seconds)."""
    t0 = time.monotonic()
    text = TEXTS.get(user, f"{user} is training a small adapter today.")
    info = client.call("/add_lora", {"rank": 8, "alpha": 16})
    aid = info["adapter_id"]
    if not quiet:
        say(user, f"created adapter {aid}")
    losses = []
    for step in range(1, steps + 1):
        # Both are sent at once; the worker runs one adapter's jobs in order.
        f_fb = client.submit("/fwdbwd", {"adapter_id": aid, "data": [{"text": text}] * batch})
        f_opt = client.submit("/optim_step", {"adapter_id": aid,
                                              "adam_params": {"learning_rate": lr}})
        loss = client.wait(f_fb, on_progress=None if quiet else progress_printer(user, step,
                                                                                steps))["loss"]
        client.wait(f_opt)
        losses.append(loss)
        if not quiet:
            say(user, f"step {step:>2}/{steps}  loss {loss:.4f}")
    prompt = " ".join(text.split()[:3])
    out = client.call("/api/v1/sample", {"adapter_id": aid, "prompts": [prompt],
                                         "sampling_params": {"max_tokens": 24,
                                                             "temperature": 0}})
    s = out["samples"][0]
    s = s.get("text", s) if isinstance(s, dict) else s
    client.call(f"/adapters/{aid}", method="DELETE")
    if not quiet:
        say(user, f"sample: {prompt!r} -> {s!r}")
    return losses[0], losses[-1], prompt + s, time.monotonic() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", default=os.environ.get("CELERIAC_URL", "http://127.0.0.1:8000"))
    ap.add_argument("--users", default="alice,bob,carol")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--batch", type=int, default=4, help="examples per fwdbwd")
    ap.add_argument("--no-sequential", action="store_true",
                    help="skip the one-after-another comparison run")
    args = ap.parse_args()

    keys = api_keys()
    users = [u.strip() for u in args.users.split(",") if u.strip()]
    missing = [u for u in users if u not in keys]
    if missing:
        sys.exit(f"no API key for {', '.join(missing)} in CELERIAC_API_KEYS")
    clients = {u: Client(args.url, keys[u]) for u in users}

    print("=" * 70)
    print(f"Concurrent multi-user example: {len(users)} users, {args.steps} steps each")
    print("=" * 70)
    try:
        status, health = clients[users[0]].healthz()
    except OSError as e:
        sys.exit(f"cannot reach {args.url}: {e} (is `make run` running?)")
    if status != 200:
        sys.exit(f"server not healthy: {status} {health}")
    print(f"server healthy: {health}\n")

    results, errors = {}, []

    def worker(user, quiet=False):
        try:
            results[user] = run_user(clients[user], user, args.steps, args.lr, args.batch,
                                     quiet)
        except (ApiError, OSError, TimeoutError) as e:
            errors.append(f"{user}: {e}")
            say(user, f"FAILED: {e}")

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    concurrent = time.monotonic() - t0
    if errors:
        sys.exit("some users failed:\n  " + "\n  ".join(errors))

    print("\n" + "=" * 70)
    print("SUMMARY")
    print("=" * 70)
    for u in users:
        first, last, sample, secs = results[u]
        print(f"  {u:>5}: loss {first:.4f} -> {last:.4f}  ({secs:.2f} s)  sample: {sample!r}")
    print(f"\n  concurrent: {len(users)} users in {concurrent:.2f} s")

    if not args.no_sequential:
        print("\n  running the same users one after another ...", flush=True)
        t0 = time.monotonic()
        for u in users:
            worker(u, quiet=True)
        sequential = time.monotonic() - t0
        if errors:
            sys.exit("some users failed:\n  " + "\n  ".join(errors))
        print(f"  sequential: {len(users)} users in {sequential:.2f} s")
        print(f"  speedup:    {sequential / concurrent:.2f}x with {len(users)} concurrent users")


if __name__ == "__main__":
    main()
