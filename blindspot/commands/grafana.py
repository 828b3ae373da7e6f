"""``blindspot grafana provision --url URL``: put our data source, folder and dashboards into an
existing Grafana through its HTTP API (grafana-client), idempotently, and say what changed.

Credentials come from the environment only: ``GRAFANA_TOKEN`` (a service account token), else
``GRAFANA_USER`` and ``GRAFANA_PASSWORD``. The data source is built from the same file Grafana's file
provisioning reads (``grafana/provisioning/datasources/clickhouse.yaml``, with its ``${VAR:-default}``
references expanded from the environment), so both routes give the same data source. The ClickHouse
password (``BLINDSPOT_CLICKHOUSE_PASSWORD``) is sent when the data source has none yet, or with
``--update-password``; Grafana never returns it, so it cannot be compared.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# The repo's grafana/ folder; an installed copy points BLINDSPOT_GRAFANA_DIR at its own (see Dockerfile).
GRAFANA_DIR = Path(os.environ.get("BLINDSPOT_GRAFANA_DIR") or Path(__file__).resolve().parents[2] / "grafana")
FOLDER_UID, FOLDER_TITLE = "blindspot", "Blindspot"
_ENV_REF = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)")


def expand_env(value: Any, env: Mapping[str, str]) -> Any:
    """Grafana's provisioning interpolation: ``$VAR``, ``${VAR}``, ``${VAR:-default}``."""
    if isinstance(value, str):
        return _ENV_REF.sub(lambda m: env.get(m.group(1) or m.group(3), m.group(2) or ""), value)
    if isinstance(value, dict):
        return {k: expand_env(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, env) for v in value]
    return value


def load_datasource(grafana_dir: Path, env: Mapping[str, str]) -> dict[str, Any]:
    import yaml

    doc = yaml.safe_load((grafana_dir / "provisioning/datasources/clickhouse.yaml").read_text())
    (ds,) = doc["datasources"]
    ds = expand_env(ds, env)
    ds.pop("orgId", None)
    ds.pop("editable", None)
    for k in ("port",):  # YAML ints survive; env-expanded ones are strings
        if isinstance(ds["jsonData"].get(k), str) and ds["jsonData"][k].isdigit():
            ds["jsonData"][k] = int(ds["jsonData"][k])
    return dict(ds)


def load_dashboards(grafana_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((grafana_dir / "dashboards").glob("*.json"))]


def _not_found(e: Exception) -> bool:
    return getattr(e, "status_code", None) == 404


def _differs(wanted: Mapping[str, Any], have: Mapping[str, Any], ignore: tuple[str, ...] = ()) -> bool:
    return any(have.get(k) != v for k, v in wanted.items() if k not in ignore)


def provision(api: Any, grafana_dir: Path, env: Mapping[str, str], *, update_password: bool = False
              ) -> list[tuple[str, str, str]]:
    """Create or update; return (kind, uid, "created" | "updated" | "unchanged") per object."""
    from grafana_client.client import GrafanaClientError

    report: list[tuple[str, str, str]] = []
    ds = load_datasource(grafana_dir, env)
    secure = ds.pop("secureJsonData", {}) or {}
    secure = {k: v for k, v in secure.items() if v}  # unset env: send nothing rather than ""
    try:
        have = api.datasource.get_datasource_by_uid(ds["uid"])
    except GrafanaClientError as e:
        if not _not_found(e):
            raise
        api.datasource.create_datasource(ds | ({"secureJsonData": secure} if secure else {}))
        report.append(("datasource", ds["uid"], "created"))
    else:
        has_pw = bool((have.get("secureJsonFields") or {}).get("password"))
        send_pw = bool(secure) and (update_password or not has_pw)
        changed = _differs({k: v for k, v in ds.items() if k != "jsonData"}, have) or _differs(
            ds["jsonData"], have.get("jsonData") or {})
        if changed or send_pw:
            body = ds | {"jsonData": (have.get("jsonData") or {}) | ds["jsonData"]}
            if send_pw:
                body["secureJsonData"] = secure
            api.datasource.update_datasource_by_uid(ds["uid"], body)
            report.append(("datasource", ds["uid"], "updated"))
        else:
            report.append(("datasource", ds["uid"], "unchanged"))

    try:
        folder = api.folder.get_folder(FOLDER_UID)
    except GrafanaClientError as e:
        if not _not_found(e):
            raise
        api.folder.create_folder(FOLDER_TITLE, uid=FOLDER_UID)
        report.append(("folder", FOLDER_UID, "created"))
    else:
        if folder.get("title") != FOLDER_TITLE:
            api.folder.update_folder(FOLDER_UID, title=FOLDER_TITLE, overwrite=True)
            report.append(("folder", FOLDER_UID, "updated"))
        else:
            report.append(("folder", FOLDER_UID, "unchanged"))

    for dash in load_dashboards(grafana_dir):
        uid = dash["uid"]
        try:
            have = api.dashboard.get_dashboard(uid)
        except GrafanaClientError as e:
            if not _not_found(e):
                raise
            have, status = None, "created"
        else:
            same = not _differs(dash, have.get("dashboard") or {}, ignore=("id", "version"))
            in_folder = (have.get("meta") or {}).get("folderUid") == FOLDER_UID
            status = "unchanged" if same and in_folder else "updated"
        if status != "unchanged":
            body = {k: v for k, v in dash.items() if k not in ("id", "version")} | {"id": None}
            api.dashboard.update_dashboard({"dashboard": body, "folderUid": FOLDER_UID, "overwrite": True,
                                            "message": "blindspot grafana provision"})
        report.append(("dashboard", uid, status))
    return report


def connect(url: str, env: Mapping[str, str]) -> Any:
    from grafana_client import GrafanaApi

    if env.get("GRAFANA_TOKEN"):
        credential: Any = env["GRAFANA_TOKEN"]
    elif env.get("GRAFANA_USER") and env.get("GRAFANA_PASSWORD"):
        credential = (env["GRAFANA_USER"], env["GRAFANA_PASSWORD"])
    else:
        raise SystemExit("set GRAFANA_TOKEN, or GRAFANA_USER and GRAFANA_PASSWORD, in the environment")
    if re.match(r"^\w+://[^/]*@", url):
        raise SystemExit("put credentials in the environment, not in the URL")
    return GrafanaApi.from_url(url, credential=credential)


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    g = sub.add_parser("grafana", help="Grafana: provision our data source and dashboards",
                       description="Grafana dashboards for Blindspot data (see docs/grafana.md).")
    actions = g.add_subparsers(dest="grafana_action", required=True, metavar="ACTION")
    p = actions.add_parser(
        "provision", help="create or update the data source, folder and dashboards in a Grafana",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="Grafana base URL, e.g. http://localhost:3000")
    p.add_argument("--grafana-dir", type=Path, default=GRAFANA_DIR,
                   help="folder with provisioning/ and dashboards/ (default: the repo's grafana/)")
    p.add_argument("--update-password", action="store_true",
                   help="send BLINDSPOT_CLICKHOUSE_PASSWORD even if the data source already has one")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging")


def main(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    api = connect(args.url, env)
    report = provision(api, args.grafana_dir, env, update_password=args.update_password)
    for kind, uid, status in report:
        print(f"{kind:<11} {uid:<28} {status}")
    changed = sum(1 for r in report if r[2] != "unchanged")
    print(f"{changed} changed, {len(report) - changed} unchanged")
    return 0
