"""`doctor`'s lines for a server store: each server reachable or down (and why), its version and
latency, the user's schema and its format, and the outbox (vectors waiting, erasures pending)."""

from __future__ import annotations


def server_report(env) -> dict:
    """Keys for doctor's report (empty for an embedded store). Never raises: a server that does not
    answer is a line saying so."""
    s = env.settings
    if s["store.kind"] != "server":
        return {}
    report: dict = {}
    down = []
    if s["store.url"]:
        from personavlm_cli.adapters.chroma_client import probe as probe_vectors

        v = probe_vectors(s["store.url"])
        if v["reachable"]:
            report["vector server"] = f"reachable, Chroma {v['version']}, {v['latency_ms']} ms"
        else:
            report["vector server"] = f"DOWN: {v.get('problem')}"
            down.append("vector server (Chroma)")
    if env.database_url():
        from personavlm_cli.adapters.pg_records import probe as probe_records

        r = probe_records(env.database_url(), env.user)
        if not r["reachable"]:
            report["record server"] = f"DOWN: {r.get('problem')}"
            down.append("record server (PostgreSQL)")
        else:
            report["record server"] = f"reachable, PostgreSQL {r['version']}, {r['latency_ms']} ms"
            if r.get("problem"):
                report["record schema"] = f"{r.get('schema')}: {r['problem']}"
            elif r.get("format") is None:
                report["record schema"] = f"{r['schema']}: none yet (user '{env.user}' has no memories there)"
            else:
                note = ""
                if r["format"] > r["format_known"]:
                    note = f" (newer than this personavlm's {r['format_known']}: upgrade personavlm)"
                if r.get("owner") not in (None, env.user):
                    note += f" (belongs to user '{r['owner']}': refused)"
                report["record schema"] = f"{r['schema']}, format {r['format']}{note}"
                report["vectors waiting"] = r["vectors_waiting"]
                report["erasures pending"] = r["erasures_pending"]
    report["servers down"] = ", ".join(down) if down else "none"
    return report
