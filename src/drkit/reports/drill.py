"""The DR test report of one drill: what an auditor asks for after a recovery exercise
(DORA Art. 11-12 and RTS 2024/1774 Art. 24-25, ISO 22301 8.5, SOC 2 A1.3, NIST SP 800-34 /
800-84 after-action report, HIPAA 164.308(a)(7)(ii)(D)).

Built from the drill's record alone (and the records around it: the config in force, the
remediation items), so it can be rebuilt at any time and says the same thing: identification
(record, plan and the hash of its version), scope (targets, repositories, recovery points and
why each was chosen), scenario, isolation, participants and approver, a timeline, RPO and
RTO achieved against the objectives, the validation evidence, deviations, remediation items,
sign-off and the next due date.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from drkit.catalog.chain import canonical_json, optional_time
from drkit.catalog.models import Record

SECTIONS = ("Identification", "Scope", "Scenario", "Isolation", "Participants and approval",
            "Timeline", "Objectives", "Validation evidence", "Deviations",
            "Remediation items", "Sign-off", "Next drill")


@dataclass
class DrillReport:
    """Everything the DR test report shows, as plain data (JSON as it is)."""

    record: dict[str, Any]
    plan: dict[str, Any]
    scope: list[dict[str, Any]]
    scenario: str | None
    isolation: dict[str, Any]
    participants: dict[str, Any]
    timeline: list[dict[str, Any]]
    objectives: dict[str, Any]
    validation: list[dict[str, Any]]
    deviations: list[str]
    remediations: list[dict[str, Any]]
    sign_off: dict[str, Any]
    next_due: str | None
    audit: dict[str, Any] | None = None
    evidence_key: dict[str, str] | None = None
    generated: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict_line(self) -> str:
        if self.audit is not None and not self.audit.get("intact"):
            first = self.audit.get("first_break") or {}
            return (f"CHAIN BROKEN: audit verify found a problem ({first.get('problem')}: "
                    f"{first.get('detail')}): this drill's record cannot be relied on.")
        return (f"Drill {self.record['id']} of plan {self.plan['name']}: "
                f"{self.record['status'].upper()}")

    def to_json(self) -> dict[str, Any]:
        return {"verdict": self.verdict_line, "audit": self.audit,
                "identification": {"record": self.record, "plan": self.plan},
                "scope": self.scope, "scenario": self.scenario, "isolation": self.isolation,
                "participants": self.participants, "timeline": self.timeline,
                "objectives": self.objectives, "validation": self.validation,
                "deviations": self.deviations, "remediations": self.remediations,
                "sign_off": self.sign_off, "next_due": self.next_due,
                "evidence_key": self.evidence_key, "generated": self.generated}


def build_drill_report(record: Record, config_record: Record | None,
                       remediations: list[dict[str, Any]]) -> DrillReport:
    """The report of drill ``record`` (``config_record``: the config in force when it ran)."""
    evidence = json.loads(record.evidence)
    steps = [s for s in evidence.get("steps") or [] if isinstance(s, dict)]
    plan_data = _plan_in_force(config_record, record.plan or "")
    plan = {"name": record.plan, "description": (plan_data or {}).get("description"),
            "owner": evidence.get("owner") or (plan_data or {}).get("owner"),
            "version_hash": hashlib.sha256(canonical_json(plan_data).encode()).hexdigest()
            if plan_data else None,
            "config_hash": record.config_hash,
            "config_record": config_record.id if config_record is not None else None}
    scope = [{"target": s.get("target"), "repository": s.get("repository"),
              "snapshot_id": s.get("snapshot_id"), "recovery_point": s.get("snapshot_time"),
              "chosen_by": s.get("chosen_by"), "bytes_restored": s.get("bytes_restored")}
             for s in steps]
    timeline = [{"at": optional_time(record.started_at), "event": "drill started"}]
    for step in steps:
        if step.get("started_at"):
            timeline.append({"at": step["started_at"],
                             "event": f"restore of {step.get('target')} from "
                                      f"{step.get('repository')} started"})
            if step.get("restore_s") is not None:
                done = datetime.fromisoformat(step["started_at"].rstrip("Z")) + \
                    timedelta(seconds=float(step["restore_s"]))
                timeline.append({"at": optional_time(done),
                                 "event": f"restore of {step.get('target')} done: "
                                          f"{step.get('bytes_restored')} bytes in "
                                          f"{step['restore_s']} s (restic --verify)"})
        for check in step.get("checks") or []:
            timeline.append({"at": check.get("started_at"),
                             "event": f"{step.get('target')}: {check.get('name')}: "
                                      f"{check.get('status')} ({check.get('duration_s')} s)"})
        if step.get("finished_at"):
            timeline.append({"at": step["finished_at"],
                             "event": f"step {step.get('target')} done"
                                      + (f": {step['error']}" if step.get("error") else "")})
    timeline.append({"at": optional_time(record.finished_at),
                     "event": f"drill finished: {record.status}"})
    timeline.sort(key=lambda event: event["at"] or "")
    objectives = {key: evidence.get(key) for key in (
        "rpo_objective_s", "rpo_achieved_s", "rpo_met", "rpo_complete", "rto_objective_s",
        "rto_achieved_s", "rto_met", "rto_stages")}
    validation = [{"target": s.get("target"), "repository": s.get("repository"),
                   "check": c.get("name"), "status": c.get("status"),
                   "detail": c.get("detail"), "output": c.get("output")}
                  for s in steps for c in s.get("checks") or []]
    for s in steps:
        if isinstance(s.get("proof"), dict):
            proof = s["proof"]
            validation.append({"target": s.get("target"), "repository": s.get("repository"),
                               "check": "prove-checks (damage detected)",
                               "status": "passed" if proof.get("detected") else "failed",
                               "detail": json.dumps(proof, sort_keys=True)})
    return DrillReport(
        record={"id": record.id, "seq": record.seq, "hash": record.hash,
                "run_id": record.run_id, "status": record.status,
                "started_at": optional_time(record.started_at),
                "finished_at": optional_time(record.finished_at),
                "hostname": record.hostname, "actor": record.actor, "error": record.error},
        plan=plan, scope=scope, scenario=evidence.get("scenario"),
        isolation={"sandbox": evidence.get("sandbox"),
                   "sandbox_kept": evidence.get("sandbox_kept"),
                   "scratch_databases": [s["scratch_database"] for s in steps
                                         if s.get("scratch_database")],
                   "production_server": any(s.get("production_server") for s in steps)},
        participants={"participants": evidence.get("participants") or [],
                      "approved_by": evidence.get("approved_by"),
                      "run_by": evidence.get("actor") or record.actor},
        timeline=timeline, objectives=objectives, validation=validation,
        deviations=_deviations(record, evidence, steps), remediations=remediations,
        sign_off={"approved_by": evidence.get("approved_by"), "status": record.status,
                  "record_hash": record.hash},
        next_due=evidence.get("next_due"))


def _plan_in_force(config_record: Record | None, name: str) -> dict[str, Any] | None:
    """The plan as the config record in force holds it (None when that record's content
    does not hash to the config hash it claims)."""
    if config_record is None:
        return None
    evidence = json.loads(config_record.evidence)
    effective = evidence.get("effective") or {}
    if hashlib.sha256(canonical_json(effective).encode("utf-8")).hexdigest() != \
            config_record.config_hash:
        return None
    plan = (effective.get("plans") or {}).get(name)
    return plan if isinstance(plan, dict) else None


def _deviations(record: Record, evidence: dict[str, Any], steps: list[dict[str, Any]]
                ) -> list[str]:
    out = []
    if record.status not in ("passed",):
        out.append(f"the drill {record.status}" + (f": {record.error}" if record.error else ""))
    if evidence.get("rpo_met") is False:
        out.append(f"RPO missed: {evidence.get('rpo_achieved_s')} s achieved against "
                   f"{evidence.get('rpo_objective_s')} s")
    if evidence.get("rto_met") is False:
        out.append(f"RTO missed: {evidence.get('rto_achieved_s')} s achieved against "
                   f"{evidence.get('rto_objective_s')} s")
    for step in steps:
        for check in step.get("checks") or []:
            if check.get("status") != "passed":
                out.append(f"{step.get('target')}: check '{check.get('name')}' failed: "
                           f"{check.get('detail')}")
    if evidence.get("sandbox_kept"):
        out.append("the sandbox was kept (--keep-sandbox)")
    return out


def render_markdown(report: DrillReport) -> str:
    """The report in Markdown, one section per required part."""
    lines = [f"**{report.verdict_line}**", "", f"# DR test report: drill {report.record['id']}"
             f" of plan {report.plan['name']}", ""]
    add = lines.append
    rec, plan = report.record, report.plan
    add("## Identification\n")
    add(f"- drill record {rec['id']} (seq {rec['seq']}), hash `{rec['hash']}`, run "
        f"`{rec['run_id']}`, on {rec['hostname']}")
    add(f"- plan {plan['name']} ({plan.get('description') or 'no description'}), owner "
        f"{plan.get('owner') or 'not declared'}; plan version `{plan.get('version_hash')}`, "
        f"config in force `{plan.get('config_hash')}` (record {plan.get('config_record')})")
    add("\n## Scope\n\n| target | repository | snapshot | recovery point | why chosen |\n"
        "|---|---|---|---|---|")
    for item in report.scope:
        add(f"| {item['target']} | {item['repository']} | {str(item['snapshot_id'])[:8]} "
            f"| {item['recovery_point']} | {item['chosen_by']} |")
    add(f"\n## Scenario\n\n{report.scenario or 'not stated'}")
    iso_ = report.isolation
    add(f"\n## Isolation\n\nrestored into the sandbox `{iso_['sandbox']}`"
        f"{' (kept)' if iso_['sandbox_kept'] else ' (removed afterwards)'}; scratch databases: "
        f"{', '.join(iso_['scratch_databases']) or 'none'}"
        f"{'; restored on the production server (allowed by the plan)' if iso_['production_server'] else ''}")  # noqa: E501
    people = report.participants
    add(f"\n## Participants and approval\n\nrun by {people['run_by']}; participants: "
        f"{', '.join(people['participants']) or 'none named'}; approved by "
        f"{people['approved_by'] or 'nobody named'}")
    add("\n## Timeline\n\n| when | what |\n|---|---|")
    for event in report.timeline:
        add(f"| {event['at']} | {event['event']} |")
    obj = report.objectives
    add(f"\n## Objectives\n\n| | objective | achieved | met |\n|---|---|---|---|\n"
        f"| RPO | {obj['rpo_objective_s']} s | {obj['rpo_achieved_s']} s | {obj['rpo_met']} |\n"
        f"| RTO | {obj['rto_objective_s']} s | {obj['rto_achieved_s']} s | {obj['rto_met']} |")
    add("\n## Validation evidence\n\n| target | check | status | detail |\n|---|---|---|---|")
    for check in report.validation:
        detail = str(check["detail"]).replace("|", "\\|").replace("\n", " ")
        add(f"| {check['target']} | {check['check']} | {check['status']} | {detail} |")
    add("\n## Deviations\n")
    add("\n".join(f"- {d}" for d in report.deviations) or "none")
    add("\n## Remediation items\n")
    add("\n".join(f"- {r['id']} ({r['status']}), owner {r['owner']}, due {r['due']}: "
                  f"{r['text']}" for r in report.remediations) or "none open")
    add(f"\n## Sign-off\n\nresult {rec['status']}, approved by "
        f"{report.sign_off['approved_by'] or '________________'}; record hash "
        f"`{rec['hash']}` ({'chain intact' if (report.audit or {}).get('intact') else 'CHAIN NOT INTACT'})"  # noqa: E501
        "\n\nSignature: ________________  Date: ____________")
    add(f"\n## Next drill\n\n{report.next_due or 'no drill_every declared for the plan'}")
    if report.evidence_key:
        add(f"\nCheckpoints are signed by Ed25519 key {report.evidence_key['key_id']} "
            f"(public key `{report.evidence_key['public_key']}`).")
    return "\n".join(lines) + "\n"


def render_html(report: DrillReport) -> str:
    """The report as self-contained HTML (and, through WeasyPrint, PDF)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("drkit", "templates"),
                             autoescape=True, trim_blocks=True, lstrip_blocks=True)
    return env.get_template("drill_report.html.j2").render(r=report, sections=SECTIONS,
                                                           now=datetime.now)
