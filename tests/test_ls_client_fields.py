"""Tasks narrowed to the keys a sync reads, against a server that narrows differently: a real
HTTP server on loopback whose narrowed answers lack the annotations' results. The client reads
that page again whole, and asks for whole tasks from then on, instead of a sync finding no
labels."""

from __future__ import annotations

import http.server
import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

from annotate2model.labelstudio.client import LabelStudioClient
from annotate2model.labelstudio.reading import TASK_FIELDS
from annotate2model.settings import Secret
from tests.labelstudio.conftest import serve_http

ASKED: list[dict[str, list[str]]] = []

TASKS: list[dict[str, Any]] = [
    {
        "id": i,
        "data": {"image": f"https://example.invalid/{i}.png"},
        "updated_at": "2026-11-21T10:00:00Z",
        "annotations": [
            {
                "id": 10 + i,
                "result": [
                    {
                        "from_name": "label",
                        "to_name": "image",
                        "type": "choices",
                        "value": {"choices": ["a"]},
                    }
                ],
                "was_cancelled": False,
                "updated_at": "2026-11-21T10:00:00Z",
            }
        ],
        "drafts": [],
    }
    for i in range(1, 4)
]


class NarrowsWithoutResults(http.server.BaseHTTPRequestHandler):
    """`/api/tasks`: with `include`, the annotations keep only their id and updated_at."""

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        query = parse_qs(urlsplit(self.path).query)
        ASKED.append(query)
        page, size = int(query["page"][0]), int(query["page_size"][0])
        tasks = TASKS[(page - 1) * size : page * size]
        if "include" in query:
            tasks = [
                {
                    **{k: v for k, v in t.items() if k != "drafts"},
                    "annotations": [
                        {"id": a["id"], "updated_at": a["updated_at"]} for a in t["annotations"]
                    ],
                }
                for t in tasks
            ]
        body = json.dumps({"total": len(TASKS), "tasks": tasks}).encode()
        self.send_response(200 if tasks or page == 1 else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_a_server_narrowing_annotations_without_results_gets_asked_for_whole_tasks() -> None:
    ASKED.clear()
    with (
        serve_http(NarrowsWithoutResults) as url,
        LabelStudioClient(url, Secret("a" * 40)) as client,
    ):
        first = [
            t for _, page in client.task_pages(7, fields=TASK_FIELDS, page_size=2) for t in page
        ]
        second = [t for page in client.tasks_by_id(7, [1, 2, 3], fields=TASK_FIELDS) for t in page]
    assert first == TASKS
    assert [t["annotations"][0]["result"] for t in second] == [
        t["annotations"][0]["result"] for t in TASKS
    ]
    # The narrowed first page, that page again whole, then whole pages only.
    assert ["include" in q for q in ASKED] == [True, False, False, False]
    assert all(q["fields"] == ["all"] for q in ASKED)
