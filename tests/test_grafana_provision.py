"""``blindspot grafana provision`` against Grafana's HTTP API contract.

No Grafana server can run here, so this test serves the endpoints grafana-client calls, with the
request and response shapes of Grafana's HTTP API documentation (data source, folder and dashboard
APIs: 404 ``{"message": ...}`` for a missing uid, ``POST /api/dashboards/db`` taking
``{dashboard, folderUid, overwrite}``), records every request, and checks: the first run creates
everything, a second run changes nothing, and a dashboard edited in Grafana is put back.
"""

from __future__ import annotations

import argparse
import base64
import copy
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from blindspot.commands import grafana as gp

ROOT = Path(__file__).resolve().parents[1]


class FakeGrafana:
    def __init__(self) -> None:
        self.datasources: dict[str, dict[str, Any]] = {}
        self.folders: dict[str, dict[str, Any]] = {}
        self.dashboards: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str, Any, str]] = []
        self.next_id = 1

    def handle(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        parts = path.split("?")[0].strip("/").split("/")
        if parts[:3] == ["api", "datasources", "uid"] and len(parts) == 4:
            uid = parts[3]
            if method == "GET":
                ds = self.datasources.get(uid)
                return (200, ds) if ds else (404, {"message": "Data source not found"})
            if method == "PUT":
                if uid not in self.datasources:
                    return 404, {"message": "Data source not found"}
                return 200, self._store_ds(body, self.datasources[uid]["id"], "Datasource updated")
        if parts == ["api", "datasources"] and method == "POST":
            if body["uid"] in self.datasources:
                return 409, {"message": "data source with the same name already exists"}
            return 200, self._store_ds(body, self._id(), "Datasource added")
        if parts[:2] == ["api", "folders"]:
            if method == "POST" and len(parts) == 2:
                f = {"id": self._id(), "uid": body["uid"], "title": body["title"], "version": 1,
                     "url": f"/dashboards/f/{body['uid']}/"}
                self.folders[body["uid"]] = f
                return 200, f
            uid = parts[2]
            if uid not in self.folders:
                return 404, {"message": "folder not found", "status": "not-found"}
            if method == "GET":
                return 200, self.folders[uid]
            if method == "PUT":
                self.folders[uid] |= {"title": body["title"], "version": self.folders[uid]["version"] + 1}
                return 200, self.folders[uid]
        if parts[:3] == ["api", "dashboards", "uid"] and method == "GET":
            d = self.dashboards.get(parts[3])
            return (200, copy.deepcopy(d)) if d else (404, {"message": "Dashboard not found"})
        if parts == ["api", "dashboards", "db"] and method == "POST":
            dash = body["dashboard"]
            assert body["overwrite"] is True and body["folderUid"] in self.folders
            assert dash["uid"] and dash["title"] and dash.get("id") is None
            old = self.dashboards.get(dash["uid"])
            version = old["meta"]["version"] + 1 if old else 1
            stored = dash | {"id": old["dashboard"]["id"] if old else self._id(), "version": version}
            self.dashboards[dash["uid"]] = {"dashboard": stored, "meta": {
                "folderUid": body["folderUid"], "version": version, "slug": dash["uid"]}}
            return 200, {"id": stored["id"], "uid": dash["uid"], "url": f"/d/{dash['uid']}/x",
                         "status": "success", "version": version, "slug": dash["uid"]}
        return 404, {"message": "Not found"}

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id

    def _store_ds(self, body: dict[str, Any], ds_id: int, message: str) -> dict[str, Any]:
        old = self.datasources.get(body["uid"], {})
        fields = dict(old.get("secureJsonFields", {}))
        fields |= dict.fromkeys(body.get("secureJsonData") or {}, True)
        stored = {k: v for k, v in body.items() if k != "secureJsonData"} | {
            "id": ds_id, "orgId": 1, "secureJsonFields": fields, "readOnly": False,
            "version": old.get("version", 0) + 1}
        self.datasources[body["uid"]] = stored
        return {"datasource": stored, "id": ds_id, "message": message, "name": body["name"]}


@pytest.fixture
def grafana() -> Any:
    fake = FakeGrafana()

    class Handler(BaseHTTPRequestHandler):
        def _do(self) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(n)) if n else None
            fake.requests.append((self.command, self.path, body, self.headers.get("Authorization", "")))
            status, out = fake.handle(self.command, self.path, body)
            data = json.dumps(out).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = _do

        def log_message(self, *a: Any) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    fake.url = f"http://127.0.0.1:{srv.server_address[1]}"  # type: ignore[attr-defined]
    yield fake
    srv.shutdown()


def run(fake: Any, env: dict[str, str], capsys: Any, monkeypatch: Any) -> list[str]:
    for k in ("GRAFANA_TOKEN", "GRAFANA_USER", "GRAFANA_PASSWORD", "BLINDSPOT_CLICKHOUSE_PASSWORD"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    fake.requests.clear()
    args = argparse.Namespace(url=fake.url, grafana_dir=ROOT / "grafana", update_password=False)
    assert gp.main(args) == 0
    return capsys.readouterr().out.splitlines()


def test_provision_creates_then_changes_nothing(grafana: Any, capsys: Any, monkeypatch: Any) -> None:
    env = {"GRAFANA_TOKEN": "glsa_test", "BLINDSPOT_CLICKHOUSE_PASSWORD": "pw-from-env"}
    out = run(grafana, env, capsys, monkeypatch)
    assert out[-1] == "6 changed, 0 unchanged"
    assert all(line.split()[-1] == "created" for line in out[:-1])
    assert {r[3] for r in grafana.requests} == {"Bearer glsa_test"}
    (create_ds,) = [r for r in grafana.requests if r[:2] == ("POST", "/api/datasources")]
    ds = create_ds[2]
    assert ds["uid"] == "blindspot-clickhouse" and ds["type"] == "grafana-clickhouse-datasource"
    assert ds["jsonData"]["defaultDatabase"] == "blindspot" and ds["jsonData"]["host"] == "clickhouse"
    assert ds["secureJsonData"] == {"password": "pw-from-env"}
    posted = [r[2] for r in grafana.requests if r[:2] == ("POST", "/api/dashboards/db")]
    assert sorted(p["dashboard"]["uid"] for p in posted) == [
        "blindspot-connections", "blindspot-gray-release", "blindspot-latency", "blindspot-overview"]
    assert {p["folderUid"] for p in posted} == {"blindspot"}

    out = run(grafana, env, capsys, monkeypatch)  # idempotent: only reads
    assert out[-1] == "0 changed, 6 unchanged"
    assert {r[0] for r in grafana.requests} == {"GET"}


def test_provision_puts_back_what_changed(grafana: Any, capsys: Any, monkeypatch: Any) -> None:
    user = {"GRAFANA_USER": "admin", "GRAFANA_PASSWORD": "secret"}
    run(grafana, user, capsys, monkeypatch)
    assert {r[3] for r in grafana.requests} == {"Basic " + base64.b64encode(b"admin:secret").decode()}
    # no ClickHouse password in the environment: none is sent, the data source is still created
    assert grafana.datasources["blindspot-clickhouse"]["secureJsonFields"] == {}
    grafana.dashboards["blindspot-latency"]["dashboard"]["title"] = "edited in the UI"
    grafana.datasources["blindspot-clickhouse"]["jsonData"]["defaultDatabase"] = "default"
    out = run(grafana, user | {"BLINDSPOT_CLICKHOUSE_PASSWORD": "pw"}, capsys, monkeypatch)
    status = {line.split()[1]: line.split()[2] for line in out[:-1]}
    assert status == {"blindspot-clickhouse": "updated", "blindspot": "unchanged",
                      "blindspot-connections": "unchanged", "blindspot-gray-release": "unchanged",
                      "blindspot-latency": "updated", "blindspot-overview": "unchanged"}
    assert grafana.dashboards["blindspot-latency"]["dashboard"]["title"] == "Blindspot / Latency"
    ds = grafana.datasources["blindspot-clickhouse"]
    assert ds["jsonData"]["defaultDatabase"] == "blindspot" and ds["secureJsonFields"] == {"password": True}
    out = run(grafana, user | {"BLINDSPOT_CLICKHOUSE_PASSWORD": "pw"}, capsys, monkeypatch)
    assert out[-1] == "0 changed, 6 unchanged"


def test_provision_needs_credentials_from_the_environment(monkeypatch: Any) -> None:
    for k in ("GRAFANA_TOKEN", "GRAFANA_USER", "GRAFANA_PASSWORD"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(SystemExit, match="GRAFANA_TOKEN"):
        gp.connect("http://127.0.0.1:1", {})
    with pytest.raises(SystemExit, match="environment"):
        gp.connect("http://admin:pw@127.0.0.1:1", {"GRAFANA_TOKEN": "t"})


def test_cli_wiring(grafana: Any, capsys: Any, monkeypatch: Any) -> None:
    from blindspot.cli import main as cli_main

    monkeypatch.setenv("GRAFANA_TOKEN", "glsa_cli")
    assert cli_main(["grafana", "provision", "--url", grafana.url]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "6 changed, 0 unchanged"
