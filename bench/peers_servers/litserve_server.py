"""The artifact's edge model behind LitServe: `python litserve_server.py --model-dir DIR --port P ...`.

POST /predict {"text": "..."} -> {"label": ..., "confidence": ...}; GET /health. One inference worker
process (`workers_per_device=1`) and one API server process (`num_api_servers=1`), LitServe's dynamic
batching (`LitAPI(max_batch_size=..., batch_timeout=...)`), ZeroMQ between them (`fast_queue=True`, what
LitServe's docs advise above ~100 requests/s), access log off like the edge's.
"""

from __future__ import annotations

import argparse

import litserve as ls
from _common import answers, load_classifier, report_settings


class TextClassifierAPI(ls.LitAPI):
    def __init__(self, model_dir: str, threads: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.model_dir, self.threads = model_dir, threads

    def setup(self, device: str) -> None:  # in the inference worker process
        self.classifier = load_classifier(self.model_dir, self.threads)

    def decode_request(self, request: dict) -> str:
        return request["text"]

    def predict(self, texts: list[str]) -> list[dict[str, object]]:  # batched: one text per request
        return answers(self.classifier, list(texts))

    def encode_response(self, output: dict[str, object]) -> dict[str, object]:
        return output


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, required=True)
    parser.add_argument("--batch-timeout-s", type=float, required=True)
    parser.add_argument("--fast-queue", choices=("on", "off"), default="on")
    args = parser.parse_args()
    api = TextClassifierAPI(args.model_dir, args.threads, max_batch_size=args.max_batch_size,
                            batch_timeout=args.batch_timeout_s, api_path="/predict")
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1, timeout=30,
                          fast_queue=args.fast_queue == "on")
    run = {"host": "127.0.0.1", "num_api_servers": 1, "log_level": "warning", "generate_client_file": False,
           "access_log": False, "api_server_worker_type": "process"}
    report_settings({"litserve": ls.__version__,
                     "LitAPI": {"max_batch_size": api.max_batch_size, "batch_timeout_s": api.batch_timeout,
                                "api_path": api.api_path,
                                "request_timeout_s": getattr(api, "request_timeout", None),
                                "interpreter_threads": args.threads},
                     "LitServer": {"accelerator": "cpu", "devices": server.devices,
                                   "workers_per_device": server.workers_per_device, "timeout_s": 30,
                                   "fast_queue": server.use_zmq},
                     "run": run})
    server.run(port=args.port, **run)


if __name__ == "__main__":  # the inference worker is spawned: it re-imports this module
    main()
