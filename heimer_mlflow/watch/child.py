"""One evaluation in its own process, started by a worker (:mod:`.job`): a crash, a CUDA
out-of-memory or a leak ends this process, not the watcher, and the GPU memory goes back when
it exits. It logs into the run the worker opened (``run_id``) and writes its outcome as JSON to
``result``. When the worker dies (its end of our stdin closes) we stop as on SIGTERM: the
evaluation run ends KILLED and the worker's replacement evaluates the version again."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path

from ..errors import HeimerError, one_line


def _stop_when_parent_dies() -> None:
    def watch():
        try:
            while os.read(0, 1024):  # unbuffered: no lock for the interpreter's shutdown to trip on
                pass
        except OSError:
            pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="heimer-parent-watch", daemon=True).start()


def main(spec_text: str) -> int:
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    spec = json.loads(spec_text)
    result_path = Path(spec["result"])
    from ..gate import GateFailed
    from ..interrupts import Terminated, handled

    outcome: dict = {"ok": False, "error": "the evaluation stopped before it began"}
    _stop_when_parent_dies()
    try:
        with handled():
            from ..evaluation import evaluate

            result = evaluate(spec["model_uri"], spec["data"], run_id=spec["run_id"], **spec["options"])
            outcome = {"ok": True, "verdict": result.verdict, "gate": result.gate.status if result.gate else None}
    except GateFailed as e:  # the evaluation FINISHED; the version failed its promotion rules
        outcome = {"ok": True, "verdict": e.evaluation.verdict, "gate": "failed"}
    except HeimerError as e:
        outcome = {"ok": False, "error": one_line(e, 1000)}
    except Terminated as e:
        outcome = {"ok": False, "error": f"terminated by {e}", "terminated": True}
    except KeyboardInterrupt:
        outcome = {"ok": False, "error": "interrupted", "terminated": True}
    except Exception as e:  # noqa: BLE001 - reported as the version's heimer.error
        outcome = {"ok": False, "error": one_line(e, 1000)}
    result_path.write_text(json.dumps(outcome), encoding="utf-8")
    return 0 if outcome["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
