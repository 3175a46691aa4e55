"""The control rows of a report: each states what was required of a subject, whether the
period met it, and the counts and parameters it was judged on."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from drkit.catalog.chain import optional_time as iso
from drkit.config.models import Config
from drkit.reports.rows import (
    COMPLIANT,
    NON_COMPLIANT,
    NOT_EVALUATED,
    Control,
    PlanSummary,
    RepositorySummary,
    TargetSummary,
)
from drkit.units import human_duration

# The clauses each control gives evidence for (a reviewer's map, not a certification).
REFERENCES: dict[str, list[str]] = {
    "backup_within_rpo": ["DORA Art. 12(1)", "ISO 22301 8.4", "SOC 2 A1.2",
                          "NIST SP 800-53 CP-9", "HIPAA 164.308(a)(7)(ii)(A)"],
    "drill_within_rto": ["DORA Art. 12(2)", "ISO 22301 8.5", "SOC 2 A1.3",
                         "NIST SP 800-53 CP-4", "HIPAA 164.308(a)(7)(ii)(D)"],
    "drill_not_overdue": ["DORA Art. 11(6)", "RTS 2024/1774 Art. 24", "ISO 22301 8.5",
                          "SOC 2 A1.3", "NIST SP 800-53 CP-4",
                          "HIPAA 164.308(a)(7)(ii)(D)"],
    "repository_checked": ["DORA Art. 12(2)", "SOC 2 A1.2", "NIST SP 800-53 CP-9(1)"],
    "storage_immutable": ["DORA Art. 12(3)", "SOC 2 A1.2", "NIST SP 800-53 CP-9(3)"],
    "remediation_closed_on_time": ["DORA Art. 13(2)", "ISO 22301 10.1", "SOC 2 CC4.2",
                                   "NIST SP 800-84"],
    "evidence_anchored": ["ISO 27001 A.8.15", "SOC 2 CC7.2", "NIST SP 800-53 AU-9",
                          "NIST SP 800-53 AU-10"],
}


def with_references(controls: list[Control]) -> list[Control]:
    """``controls`` with each one's framework references."""
    for control in controls:
        control.references = list(REFERENCES.get(control.control, []))
    return controls


def remediation_controls(plans: list[str], found: list[Any], end: datetime) -> list[Control]:
    """``remediation_closed_on_time``, per plan with remediation items: every item due by
    ``end`` was closed by its due date (one still open past it, or closed late, is not)."""
    out = []
    for plan in plans:
        mine = [i for i in found if i.plan == plan and i.opened_at <= end]
        if not mine:
            continue
        due = [i for i in mine if datetime.combine(i.due, datetime.max.time()) < end
               or (i.closed_at is not None and i.closed_at <= end)]
        late = [i for i in due if i.late_at(end)]
        still_open = [i for i in mine if i.open_at(end)]
        counts = {"items": len(mine), "due": len(due), "late": len(late),
                  "open": len(still_open)}
        detail = (f"{len(late)} of {len(due)} items due by {iso(end)} closed late or still "
                  f"open: {', '.join(f'{i.id} (due {i.due})' for i in late)}" if late else
                  f"{len(due)} item(s) due by {iso(end)}, each closed by its due date"
                  + (f"; {len(still_open)} open, not yet due" if still_open else ""))
        out.append(Control("remediation_closed_on_time", plan,
                           NON_COMPLIANT if late else COMPLIANT, detail, counts,
                           {"as_of": iso(end)}))
    return out


def evidence_controls(audit: dict[str, Any] | None, last_seq: int | None, *,
                      signing: bool, bucket: bool) -> list[Control]:
    """``evidence_anchored``: a checkpoint covering the period's last record is in the
    evidence bucket under object lock, as ``audit verify`` found it (the catalog's own
    columns are never taken for it)."""
    if last_seq is None:
        return []
    params = {"last_record_seq": last_seq}
    anchored = (audit or {}).get("newest_anchored_seq")
    counts = {"newest_signed_seq": (audit or {}).get("newest_signed_seq"),
              "newest_anchored_seq": anchored}
    if not signing:
        detail = "no evidence.signing_key: the chain's head is not signed"
    elif not bucket:
        detail = ("signed checkpoints are kept in the catalog and the local anchor file only: "
                  "no evidence.bucket to anchor them under object lock")
    elif audit is None or not audit.get("intact"):
        detail = "audit verify did not pass: nothing it found can vouch for the period"
    elif anchored is None or anchored < last_seq:
        detail = (f"the newest checkpoint in the evidence bucket is at seq {anchored or '-'}; "
                  f"the period ends at seq {last_seq}")
    else:
        return [Control("evidence_anchored", "catalog", COMPLIANT,
                        f"a checkpoint at seq {anchored} covers the period and is in the "
                        "evidence bucket under object lock (read back by audit verify)",
                        counts, params)]
    return [Control("evidence_anchored", "catalog", NON_COMPLIANT, detail, counts, params)]


def rpo_controls(targets: list[TargetSummary]) -> list[Control]:
    """``backup_within_rpo``: every repository of the target held data no older than the RPO
    throughout the period, from its first good backup on (measured from recovery points,
    backups' ``started_at``); a repository with no good backup before the period's end fails
    it."""
    out = []
    for t in targets:
        counts = {"backups": t.backups, "failed": t.failed,
                  "longest_rpo_exposure_s": t.longest_rpo_exposure_s,
                  "worst_repository": t.worst_repository}
        params = {"rpo_objective_s": t.rpo_objective_s}
        missing = t.without_backup
        if t.rpo_objective_s is None:
            out.append(Control("backup_within_rpo", t.target, NOT_EVALUATED,
                               "no recovery plan declares an RPO for this target", counts, params))
        elif missing:
            out.append(Control(
                "backup_within_rpo", t.target, NON_COMPLIANT,
                f"no good backup in repository {', '.join(missing)} before the period's end",
                counts, params))
        elif t.longest_rpo_exposure_s is None:
            out.append(Control("backup_within_rpo", t.target, NON_COMPLIANT,
                               "no good backup recorded", counts, params))
        else:
            ok = t.longest_rpo_exposure_s <= t.rpo_objective_s
            counted = [c for c in t.by_repository if c.declared]
            each = "" if len(counted) < 2 else " (per repository: " + ", ".join(
                f"{c.repository} {c.longest_exposure_s or 0:.0f} s" for c in counted) + ")"
            out.append(Control(
                "backup_within_rpo", t.target, COMPLIANT if ok else NON_COMPLIANT,
                f"longest time without newer backed-up data {t.longest_rpo_exposure_s:.0f} s "
                f"in repository {t.worst_repository} {'within' if ok else 'exceeds'} the RPO "
                f"of {t.rpo_objective_s:.0f} s{each}", counts, params))
    return out


def rto_controls(plans: list[PlanSummary]) -> list[Control]:
    """``drill_within_rto``: every drill of the period restored and verified within the RTO
    (a failed, interrupted or checks_too_weak drill is not compliant)."""
    out = []
    for p in plans:
        within = round((p.rto_compliance_rate or 0) * p.drills)
        counts = {"drills": p.drills, "within_rto": within, "passed": p.passed,
                  "breached": p.breached, "failed": p.failed + p.interrupted,
                  "checks_too_weak": p.checks_too_weak}
        params = {"rto_objective_s": p.rto_objective_s}
        if not p.drills:
            out.append(Control("drill_within_rto", p.plan, NON_COMPLIANT,
                               "no drill in the period", counts, params))
            continue
        ok = within == p.drills and p.unsuccessful == 0
        failed = p.failed + p.interrupted
        out.append(Control(
            "drill_within_rto", p.plan, COMPLIANT if ok else NON_COMPLIANT,
            f"{within} of {p.drills} drills restored within the RTO"
            + (f"; {failed} failed" if failed else "")
            + (f"; {p.checks_too_weak} with checks too weak (they passed on data damaged on "
               "purpose)" if p.checks_too_weak else ""),
            counts, params))
    return out


def frequency_controls(plans: list[PlanSummary], end: datetime) -> list[Control]:
    """``drill_not_overdue``, for plans that declare ``drill_every``: a drill of the plan passed
    within ``drill_every`` before ``end`` (the period's end, or now if sooner)."""
    out = []
    for p in plans:
        if p.drill_every_s is None:
            continue
        every = human_duration(p.drill_every_s)
        counts = {"drills": p.drills, "passed": p.passed,
                  "last_passed_at": iso(p.last_passed_at)}
        params = {"drill_every_s": p.drill_every_s, "as_of": iso(end)}
        if p.last_passed_at is None:
            detail = f"no drill of this plan ever passed (drill_every {every})"
        else:
            age = human_duration((end - p.last_passed_at).total_seconds())
            detail = (f"the last passed drill finished {iso(p.last_passed_at)}, {age} before "
                      f"{iso(end)}: {'beyond' if p.overdue else 'within'} drill_every {every}")
        out.append(Control("drill_not_overdue", p.plan,
                           NON_COMPLIANT if p.overdue else COMPLIANT, detail, counts, params))
    return out


def check_controls(repos: list[RepositorySummary]) -> list[Control]:
    out = []
    for r in repos:
        counts = {"checks": r.checks, "passed": r.checks_passed, "failed": r.checks_failed}
        params = {"last_check_at": iso(r.last_check_at)}
        if not r.checks:
            out.append(Control("repository_checked", r.repository, NON_COMPLIANT,
                               "no integrity check in the period", counts, params))
        elif r.last_check_status != "passed":
            out.append(Control("repository_checked", r.repository, NON_COMPLIANT,
                               "the latest check in the period failed", counts, params))
        else:
            out.append(Control("repository_checked", r.repository, COMPLIANT,
                               "the latest check in the period passed", counts, params))
    return out


def immutability_controls(config: Config, repos: list[RepositorySummary]) -> list[Control]:
    out = []
    for r in repos:
        repo = config.repositories.get(r.repository)
        declared = repo.posture.model_dump() if repo is not None and repo.posture else None
        params = {"declared_posture": declared}
        posture = r.posture
        if posture is None:
            out.append(Control("storage_immutable", r.repository, NON_COMPLIANT,
                               "no storage posture evidence in the period (not S3, or no "
                               "check read it)", {}, params))
            continue
        locked = bool(posture.get("object_lock")) and posture.get("versioning") == "Enabled"
        detail = (f"object lock {posture.get('object_lock_mode') or 'on'} "
                  f"{posture.get('object_lock_days') or '?'} days, versioning enabled"
                  if locked else
                  f"object lock {'on' if posture.get('object_lock') else 'off'}, versioning "
                  f"{posture.get('versioning')}")
        out.append(Control("storage_immutable", r.repository,
                           COMPLIANT if locked else NON_COMPLIANT, detail,
                           {"checks_with_posture": 1}, {**params, "found": posture}))
    return out
