"""Worker coordination: something that must exist once per store (a study's MLflow run, the target
model's run, a retain model's run) is created by exactly one of the workers that need it at the same
time; the others wait for it. The claims live in the Optuna storage the workers share."""

from __future__ import annotations

import time

CLAIM_TIMEOUT_S = 120  # a claim on creating a study's MLflow run that produced none in this long is taken over
BEAT_S = 10.0  # a claim's holder beats this often


def once(storage, key: str, find, create, poll_s: float = 0.5, log=None, what: str | None = None) -> str:
    """``find()`` if it finds something, else ``create()`` in exactly one of the workers that get here
    together; the others wait for ``find()`` to answer. Returns what was found or created.

    The claim is atomic: the worker that creates the Optuna study ``<key>#claim-<k>`` (study names are
    unique in every Optuna storage) creates; it beats on the claim while it works. A claim whose beat
    has not moved for ``CLAIM_TIMEOUT_S`` (its worker died) is taken over by claiming ``k + 1``.
    Claims are deleted once ``create()`` returned. A claim silent for more than two beats is announced
    with ``log`` (``what``: what is awaited), once per claim."""
    import threading

    import optuna

    generation, last_beat, seen_at, announced = 1, None, None, 0
    while True:
        found = find()
        if found:
            return found
        claim = f"{key}#claim-{generation}"
        try:
            claimed = optuna.create_study(study_name=claim, storage=storage)
        except optuna.exceptions.DuplicatedStudyError:
            try:
                beat = optuna.load_study(study_name=claim, storage=storage).user_attrs.get("beat")
            except KeyError:  # the claim was just released: look again
                beat = "released"
            if beat != last_beat or seen_at is None:
                last_beat, seen_at = beat, time.monotonic()
            elif time.monotonic() - seen_at > CLAIM_TIMEOUT_S:
                generation, last_beat, seen_at = generation + 1, None, None
                continue
            elif log is not None and announced < generation and time.monotonic() - seen_at > 2.5 * min(BEAT_S, CLAIM_TIMEOUT_S / 4):
                announced = generation
                silent = time.monotonic() - seen_at
                log(f"waiting for {what or key}, started by a worker that stopped (no beat for {silent:.0f} s); "
                    f"taking over in {CLAIM_TIMEOUT_S - silent:.0f} s")
            time.sleep(poll_s)
            continue
        stop = threading.Event()

        def beat_on(claimed=claimed):
            count = 0
            while not stop.wait(min(BEAT_S, CLAIM_TIMEOUT_S / 4)):
                count += 1
                try:
                    claimed.set_user_attr("beat", count)
                except Exception:  # the storage hiccuped: the next beat will do
                    pass

        beating = threading.Thread(target=beat_on, daemon=True)
        beating.start()
        try:
            # Unless it appeared between the look above and the claim (claims are deleted after it).
            return find() or create()
        finally:
            stop.set()
            beating.join()
            for k in range(1, generation + 1):
                try:
                    optuna.delete_study(study_name=f"{key}#claim-{k}", storage=storage)
                except Exception:  # already gone (KeyError) or the storage is unreachable: stale claims expire
                    pass
