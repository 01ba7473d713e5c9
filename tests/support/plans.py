"""Reading query plans, to check that a lookup is served by an index instead of a scan."""

from __future__ import annotations

from typing import Any


def plan_nodes(plan: Any) -> list[str]:
    """Every node type / stage name in an explain plan (FerretDB's PostgreSQL plan or mongod's)."""
    found: list[str] = []
    if isinstance(plan, dict):
        for key in ("Node Type", "Index Name", "stage"):
            if key in plan:
                found.append(str(plan[key]))
        for value in plan.values():
            found.extend(plan_nodes(value))
    elif isinstance(plan, list):
        for value in plan:
            found.extend(plan_nodes(value))
    return found


async def scans_the_collection(db: Any, collection: str, query: dict[str, Any]) -> tuple[bool, list[str]]:
    """Whether the server reads every document of ``collection`` to answer ``query``, and the plan."""
    explained = await db.command("explain", {"find": collection, "filter": query})
    nodes = plan_nodes(explained.get("queryPlanner", explained))
    return ("Seq Scan" in nodes or "COLLSCAN" in nodes), nodes
