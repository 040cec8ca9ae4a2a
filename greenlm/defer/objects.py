"""OpenAI's Batch API objects and result lines, built from what the state keeps.

Extension fields carry a `greenlm_` prefix: on the batch, its energy and carbon, and the carbon the same
energy would have emitted at the grid intensity of its submission; on each result line, the usage carries
energy_j and carbon_g as every greenlm response does.
"""

from __future__ import annotations

import uuid

from greenlm.energy.carbon import carbon_g

EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."
CANCELLED_MESSAGE = "This request was not executed: the batch was cancelled."


def new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


def file_object(record: dict) -> dict:
    """The file object as OpenAI answers it (internal keys dropped)."""
    return {k: v for k, v in record.items() if not k.startswith("_")}


def result_line(custom_id: str, status_code: int, body: dict) -> dict:
    """One line of an output (2xx) or error (4xx/5xx) file: the request's own response."""
    return {
        "id": new_id("batch_req_"),
        "custom_id": custom_id,
        "response": {"status_code": status_code, "request_id": new_id("req_"), "body": body},
        "error": None,
    }


def unrun_line(custom_id: str, code: str, message: str) -> dict:
    """A line that never ran (expired, cancelled): no response, an error."""
    return {
        "id": new_id("batch_req_"),
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": message},
    }


def batch_object(record: dict, totals: dict, pue: float) -> dict:
    """The batch object: the stored record's public fields, with the counts, usage and energy of the lines
    finished so far."""
    out = {k: v for k, v in record.items() if not k.startswith("_")}
    out["request_counts"] = {
        "total": record["_lines"],
        "completed": totals["completed"],
        "failed": totals["failed"],
    }
    prompt, completion = totals["prompt_tokens"], totals["completion_tokens"]
    out["usage"] = {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }
    submitted = record["_intensity_at_submission_g_per_kwh"]
    out.update(
        greenlm_energy_j=totals["energy_j"],
        greenlm_carbon_g=totals["carbon_g"],
        greenlm_carbon_if_run_at_submission_g=carbon_g(totals["energy_j"], submitted, pue),
        greenlm_intensity_at_submission_g_per_kwh=submitted,
        greenlm_meter=record.get("_meter"),
        greenlm_energy_source=record.get("_energy_source"),
    )
    return out
