"""The official BIDS validator, run offline, on the input and on derivative datasets.

The validator is the `bids-validator-deno` package (PyPI): a JavaScript bundle
(`bids_validator_deno/bids-validator.js`, validator 3.0.x with its schema built in) run by the
Deno runtime from the `deno` package. Its console script `bids-validator-deno` execs
`deno --allow-read --allow-env --allow-net --allow-write --allow-run=git <bundle> ...`; here the
bundle is run directly with read and environment permissions only, so it can neither reach the
network nor write anywhere, and with `DENO_DIR` set to a temporary (or given) folder, because
Deno otherwise caches into `$HOME/.cache/deno` (a run may not write into `$HOME`). It takes
0.5-1.2 s per small dataset here (reference/MEASUREMENTS.md "BIDS validator": ~0.3 s).

The validator exits 16 when it finds errors and 0 otherwise; `--format json` gives
`{"issues": {"issues": [{code, severity, location|affects, subCode, issueMessage}],
"codeMessages": {code: text}}, "summary": {...}}`.
"""
from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from shiva_bids.bids.access import check_readable
from shiva_bids.bids.annex import tolerate_unfetched
from shiva_bids.errors import InvalidBIDSError, MissingInputError

log = logging.getLogger(__name__)

TIMEOUT_S = 600
SUMMARY_ISSUES = 5  # error codes shown in the one-line summary


class ValidatorUnavailable(RuntimeError):
    """The validator cannot run here (package or runtime missing, crash, timeout)."""


@dataclass(frozen=True)
class ValidationIssue:
    """One validator finding: a code (e.g. NOT_INCLUDED), its severity and the files."""

    code: str
    severity: str
    files: tuple[str, ...] = ()
    message: str = ""
    sub_code: str = ""


@dataclass(frozen=True)
class ValidationReport:
    """The validator's errors and warnings for one dataset."""

    dataset: Path
    errors: tuple[ValidationIssue, ...]
    warnings: tuple[ValidationIssue, ...]

    @property
    def ok(self) -> bool:
        return not self.errors

    def error_codes(self) -> list[str]:
        """Distinct error codes in order of first appearance."""
        return list(dict.fromkeys(issue.code for issue in self.errors))

    def summary(self, max_codes: int = SUMMARY_ISSUES) -> str:
        """One line: error codes with counts and an example file each."""
        if self.ok:
            return f"{self.dataset}: no BIDS errors ({len(self.warnings)} warnings)"
        parts = []
        codes = self.error_codes()
        for code in codes[:max_codes]:
            issues = [i for i in self.errors if i.code == code]
            example = next((f for i in issues for f in i.files), "")
            parts.append(f"{code} x{len(issues)}" + (f" (e.g. {example})" if example else ""))
        more = f"; and {len(codes) - max_codes} more codes" if len(codes) > max_codes else ""
        return f"{len(self.errors)} BIDS error(s): " + "; ".join(parts) + more


def validator_command() -> list[str]:
    """The command that runs the bundled validator (raises ValidatorUnavailable)."""
    try:
        import bids_validator_deno
        from deno import find_deno_bin
    except ImportError as exc:
        raise ValidatorUnavailable(f"the bids-validator-deno package is not installed "
                                   f"({exc.name})") from exc
    bundle = Path(bids_validator_deno.__file__).with_name("bids-validator.js")
    deno = Path(os.fsdecode(find_deno_bin()))
    if not bundle.is_file() or not os.access(deno, os.X_OK):
        raise ValidatorUnavailable(f"the validator bundle {bundle} or Deno {deno} is missing")
    return [str(deno), "run", "--no-prompt", "--allow-read", "--allow-env", str(bundle)]


def _issue(raw: dict, messages: dict) -> ValidationIssue:
    files = raw.get("affects") or ([raw["location"]] if raw.get("location") else [])
    return ValidationIssue(code=str(raw.get("code", "")), severity=str(raw.get("severity", "")),
                           files=tuple(str(f) for f in files),
                           message=str(raw.get("issueMessage") or messages.get(raw.get("code"),
                                                                               "")),
                           sub_code=str(raw.get("subCode", "")))


def parse_report(dataset: Path, output: str) -> ValidationReport:
    """Turn the validator's `--format json` output into a :class:`ValidationReport`."""
    try:
        payload = json.loads(output)
        raw_issues = payload["issues"]["issues"]
        messages = payload["issues"].get("codeMessages", {})
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValidatorUnavailable(f"unexpected validator output ({exc}): "
                                   f"{output[:200]!r}") from exc
    issues = [_issue(raw, messages) for raw in raw_issues]
    return ValidationReport(dataset=dataset,
                            errors=tuple(i for i in issues if i.severity == "error"),
                            warnings=tuple(i for i in issues if i.severity == "warning"))


def validate_dataset(path: Path, cache_dir: Path | None = None,
                     ignore_nifti_headers: bool = False,
                     timeout_s: float = TIMEOUT_S) -> ValidationReport:
    """Run the official validator on a raw or derivative dataset and return its findings.

    `cache_dir` is Deno's cache (`DENO_DIR`); a temporary folder when None (removed after).
    Raises ValidatorUnavailable when the validator cannot run.
    """
    command = validator_command() + [str(path), "--format", "json"]
    if ignore_nifti_headers:
        command.append("--ignoreNiftiHeaders")
    with tempfile.TemporaryDirectory(prefix="shiva-bids-deno-") as tmp:
        env = {**os.environ, "DENO_DIR": str(cache_dir or tmp), "NO_COLOR": "1",
               "DENO_NO_UPDATE_CHECK": "1"}
        try:
            done = subprocess.run(command, capture_output=True, text=True, env=env,
                                  timeout=timeout_s, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ValidatorUnavailable(f"the validator did not run ({exc})") from exc
    if done.returncode not in (0, 16):
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ValidatorUnavailable(f"the validator failed with exit {done.returncode}: "
                                   f"{tail[0][:200]}")
    return parse_report(Path(path), done.stdout)


# Raw `anat` images named `_swi` are common but not in the BIDS schema (the standard suffix
# is T2starw, or `swi` only in the SWI extension proposal); discovery uses them on purpose
# (shiva_bids.bids.discovery), so the validator's NOT_INCLUDED for them is not fatal.
_SWI_NAME = re.compile(r"/sub-[^/]+/(ses-[^/]+/)?anat/[^/]+_swi\.(nii|nii\.gz|json)$")


def tolerate_swi(report: ValidationReport) -> ValidationReport:
    """Drop NOT_INCLUDED errors that only concern `anat/*_swi.nii[.gz]` files (logged)."""
    kept = []
    for issue in report.errors:
        if issue.code == "NOT_INCLUDED" and issue.files and all(
                _SWI_NAME.search(f) for f in issue.files):
            log.warning("BIDS validator: %s is not a BIDS name; used as the SWI image anyway",
                        ", ".join(issue.files))
            continue
        kept.append(issue)
    return replace(report, errors=tuple(kept))


def description_problem(path: Path) -> str:
    """What is wrong with a raw dataset's `dataset_description.json` ('' when nothing): empty,
    not JSON, without `Name`/`BIDSVersion`. Raises MissingInputError (66) when it cannot be
    read or is not a JSON object (pybids, which reads it, would stop on either)."""
    check_readable(path)
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        return "empty file"
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"not valid JSON (line {exc.lineno}: {exc.msg})"
    if not isinstance(payload, dict):
        raise MissingInputError(f"{path}: not a BIDS dataset description (a JSON "
                                f"{type(payload).__name__}, not an object)")
    missing = [key for key in ("Name", "BIDSVersion") if not payload.get(key)]
    return f"lacks the required {' and '.join(missing)}" if missing else ""


def validate_input(bids_dir: Path, skip: bool = False, cache_dir: Path | None = None) -> None:
    """Validate the input dataset before any work (BIDS_APPS.md §1.2: failures exit 16).

    `dataset_description.json` is checked first so that a folder that is not a BIDS dataset
    at all gets a clear message: exit 16, or 66 with `--skip-bids-validation` (the input then
    lacks what the app needs). Non-standard `_swi` names are tolerated (:func:`tolerate_swi`),
    and so are annexed files that are not fetched (shiva_bids.bids.annex).
    If the validator cannot run, a warning says validation was skipped and why, and the run
    goes on.
    """
    description = bids_dir / "dataset_description.json"
    if not description.is_file():
        message = (f"{bids_dir} is not a BIDS dataset: it has no dataset_description.json")
        if skip:
            raise MissingInputError(message)
        raise InvalidBIDSError(message)
    if skip:
        problem = description_problem(description)
        if problem:
            log.warning("%s: %s; continuing without validation (--skip-bids-validation)",
                        description, problem)
        log.info("BIDS validation skipped (--skip-bids-validation)")
        return
    try:
        report = validate_dataset(bids_dir, cache_dir=cache_dir)
    except ValidatorUnavailable as exc:
        log.warning("BIDS validation was skipped: %s", exc)
        return
    report = tolerate_unfetched(tolerate_swi(report), bids_dir)
    for issue in report.errors:
        log.debug("BIDS error %s %s", issue.code, ", ".join(issue.files[:3]))
    if not report.ok:
        raise InvalidBIDSError(f"{bids_dir}: {report.summary()}; fix the dataset (see "
                               "`bids-validator-deno --verbose`) or use --skip-bids-validation")
    log.info("BIDS validation passed (%d warnings)", len(report.warnings))


__all__ = ["validate_dataset", "validate_input", "tolerate_swi", "validator_command", "parse_report",
           "ValidationReport", "ValidationIssue", "ValidatorUnavailable"]
