"""Pure resume and retry decisions of the downloader (no I/O): trio_fwagent.download.decisions."""

from __future__ import annotations

import email.utils

import pytest

from trio_fwagent.download import RetryPolicy
from trio_fwagent.download.decisions import (
    Complete,
    ContentRange,
    Fail,
    Refetch,
    Retry,
    RetryBudget,
    Validators,
    Write,
    decide,
    parse_content_range,
    parse_retry_after,
    request_headers,
    resume_point,
)

URL = "http://files.example/fw.bin"
KNOWN = Validators(etag='"v1"', last_modified="Wed, 01 Jan 2025 00:00:00 GMT", length=1000)


def at(offset: int, status: int, headers: dict[str, str], known: Validators = KNOWN) -> object:
    return decide(offset, known, status, headers, url=URL, now=1_700_000_000.0)


# -- requests -----------------------------------------------------------------------------


def test_first_request_asks_for_identity_encoding_and_no_range() -> None:
    assert request_headers(0, KNOWN) == {"Accept-Encoding": "identity"}


def test_resume_request_uses_range_and_strong_etag_as_if_range() -> None:
    assert request_headers(500, KNOWN) == {
        "Accept-Encoding": "identity",
        "Range": "bytes=500-",
        "If-Range": '"v1"',
    }


def test_weak_etag_is_not_used_for_if_range_last_modified_is() -> None:
    known = Validators(etag='W/"v1"', last_modified="Wed, 01 Jan 2025 00:00:00 GMT")
    assert request_headers(1, known)["If-Range"] == "Wed, 01 Jan 2025 00:00:00 GMT"


def test_no_validator_means_no_if_range() -> None:
    assert "If-Range" not in request_headers(1, Validators(length=10))


# -- responses ----------------------------------------------------------------------------


def test_200_to_a_first_request_writes_from_zero_and_learns_validators() -> None:
    decision = at(0, 200, {"Content-Length": "1000", "ETag": '"v1"'}, Validators())
    assert decision == Write(0, Validators(etag='"v1"', length=1000))


def test_200_to_a_ranged_request_restarts_on_the_same_body() -> None:
    # thin-edge's file server: no Range support, no validators.
    decision = at(500, 200, {"Content-Length": "1000"})
    assert isinstance(decision, Write)
    assert decision.start == 0
    assert decision.restart_reason is not None and "ignored the Range" in decision.restart_reason


def test_200_with_a_new_etag_says_the_file_changed() -> None:
    decision = at(500, 200, {"Content-Length": "1000", "ETag": '"v2"'})
    assert isinstance(decision, Write) and decision.start == 0
    assert decision.restart_reason == 'ETag changed from "v1" to "v2"'


def test_good_206_resumes_at_the_offset() -> None:
    decision = at(500, 206, {"Content-Range": "bytes 500-999/1000", "ETag": '"v1"'})
    assert decision == Write(500, KNOWN)


@pytest.mark.parametrize(
    ("content_range", "why"),
    [
        ("bytes 400-999/1000", "starts at byte 400"),
        ("bytes 500-1199/1200", "length changed"),
        ("bytes 500-999/*", "without the file's total"),
        (None, "unusable Content-Range"),
        ("bytes 999-500/1000", "unusable Content-Range"),
        ("items 1-2/3", "unusable Content-Range"),
    ],
)
def test_bad_206_refetches_from_zero(content_range: str | None, why: str) -> None:
    headers = {} if content_range is None else {"Content-Range": content_range}
    decision = at(500, 206, headers)
    assert isinstance(decision, Refetch)
    assert why in decision.reason


def test_206_without_a_total_refetches_even_when_no_length_is_known() -> None:
    # With no total anywhere, the end of this body cannot say the file is complete: a
    # download without a sha256 (te/ requests) would be taken as whole while short.
    decision = at(500, 206, {"Content-Range": "bytes 500-999/*"}, known=Validators())
    assert isinstance(decision, Refetch)
    assert "without the file's total" in decision.reason


def test_206_with_another_etag_refetches() -> None:
    decision = at(500, 206, {"Content-Range": "bytes 500-999/1000", "ETag": '"v2"'})
    assert isinstance(decision, Refetch) and "ETag changed" in decision.reason


def test_416_at_the_end_means_complete() -> None:
    assert at(1000, 416, {"Content-Range": "bytes */1000"}) == Complete()
    assert at(1000, 416, {}) == Complete()  # no Content-Range: trust the known length


def test_416_at_the_offset_is_not_complete_without_a_known_length_or_with_a_new_etag() -> None:
    # Nothing recorded said how long the file was: the server's file is as long as our
    # prefix now, which does not make the prefix that file.
    decision = at(1000, 416, {"Content-Range": "bytes */1000"}, Validators())
    assert isinstance(decision, Refetch) and "no length was known" in decision.reason
    decision = at(1000, 416, {"Content-Range": "bytes */1000", "ETag": '"v2"'})
    assert isinstance(decision, Refetch) and "ETag changed" in decision.reason


def test_416_elsewhere_refetches() -> None:
    assert isinstance(at(500, 416, {"Content-Range": "bytes */400"}), Refetch)
    # A server that now says 1000 while we expected 1200 has another file.
    known = Validators(length=1200)
    assert isinstance(at(1000, 416, {"Content-Range": "bytes */1000"}, known), Refetch)


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_transient_statuses_retry(status: int) -> None:
    decision = at(0, status, {"Retry-After": "7"})
    assert isinstance(decision, Retry)
    assert decision.retry_after == 7.0
    assert decision.status_code == status


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (401, "HTTP 401 Unauthorized from http://files.example/fw.bin"),
        (403, "HTTP 403 Forbidden from http://files.example/fw.bin"),
        (404, "HTTP 404 Not Found from http://files.example/fw.bin"),
        (410, "HTTP 410 Gone from http://files.example/fw.bin"),
        (418, "HTTP 418 I'm a Teapot from http://files.example/fw.bin"),
        (499, "HTTP 499 from http://files.example/fw.bin"),
    ],
)
def test_client_errors_fail_permanently_with_the_status(status: int, reason: str) -> None:
    assert at(0, status, {}) == Fail(reason, status_code=status)


def test_unexpected_success_status_fails() -> None:
    decision = at(0, 204, {})
    assert isinstance(decision, Fail) and "204" in decision.reason


# -- header parsing -------------------------------------------------------------------------


def test_parse_content_range() -> None:
    assert parse_content_range("bytes 0-9/10") == ContentRange(0, 9, 10)
    assert parse_content_range("bytes 0-9/*") == ContentRange(0, 9, None)
    assert parse_content_range("bytes */10") == ContentRange(None, None, 10)
    assert parse_content_range("bytes 0-10/10") is None  # last beyond the end
    assert parse_content_range("bytes */*") is None
    assert parse_content_range(None) is None


def test_retry_after_seconds_and_http_date() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now) == 30.0
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


# -- continuing a partial file from an earlier run ----------------------------------------------


def point(**changes: object) -> object:
    args: dict[str, object] = {
        "part_size": 400,
        "saved_url": URL,
        "saved_sha256": "a" * 64,
        "saved": KNOWN,
        "url": URL,
        "sha256": "a" * 64,
    }
    args.update(changes)
    return resume_point(**args)  # type: ignore[arg-type]


def test_matching_sidecar_resumes_at_the_partial_size() -> None:
    assert point() == resume_point(
        part_size=400, saved_url=URL, saved_sha256="a" * 64, saved=KNOWN, url=URL, sha256="a" * 64
    )
    result = point()
    assert result.offset == 400 and result.validators == KNOWN and result.discarded is None  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"saved_url": None, "saved": None}, "without a readable sidecar"),
        ({"sha256": "b" * 64}, "another checksum"),
        ({"url": "http://elsewhere/fw.bin", "sha256": None}, "another URL"),
        ({"part_size": 1001}, "longer than the file"),
    ],
)
def test_unusable_partial_files_are_discarded(changes: dict[str, object], why: str) -> None:
    result = point(**changes)
    assert result.offset == 0  # type: ignore[attr-defined]
    assert why in result.discarded  # type: ignore[attr-defined]


def test_same_checksum_from_another_url_keeps_bytes_but_not_validators() -> None:
    result = point(url="http://mirror/fw.bin")
    assert result.offset == 400  # type: ignore[attr-defined]
    assert result.validators == Validators(length=1000)  # type: ignore[attr-defined]


# -- retry budget -------------------------------------------------------------------------------


def test_backoff_is_capped_exponential_with_full_jitter() -> None:
    budget = RetryBudget(
        RetryPolicy(max_attempts=None, base_delay=1.0, max_delay=8.0),
        started_at=0.0,
        random=lambda: 0.999999,
    )
    delays = [budget.failed(0.0) for _ in range(6)]
    assert delays == pytest.approx([1.0, 2.0, 4.0, 8.0, 8.0, 8.0], rel=1e-5)
    low = RetryBudget(RetryPolicy(), started_at=0.0, random=lambda: 0.0)
    assert low.failed(0.0) == 0.0  # full jitter reaches down to zero


def test_retry_after_is_a_lower_bound() -> None:
    budget = RetryBudget(RetryPolicy(base_delay=1.0), started_at=0.0, random=lambda: 0.5)
    assert budget.failed(0.0, retry_after=42.0) == 42.0


def test_max_attempts_counts_failures_in_a_row_and_progress_resets_it() -> None:
    budget = RetryBudget(RetryPolicy(max_attempts=3), started_at=0.0, random=lambda: 0.0)
    assert budget.failed(0.0) is not None
    assert budget.failed(0.0) is not None
    budget.progressed()
    assert budget.failures == 0
    assert budget.failed(0.0) is not None
    assert budget.failed(0.0) is not None
    assert budget.failed(0.0) is None  # third failure in a row


def test_give_up_after_bounds_the_total_time_including_retry_after() -> None:
    budget = RetryBudget(
        RetryPolicy(max_attempts=None, give_up_after=60.0), started_at=100.0, random=lambda: 0.0
    )
    assert budget.failed(130.0, retry_after=20.0) == 20.0
    assert budget.failed(130.0, retry_after=40.0) is None  # would start after 60 s
    assert budget.failed(161.0) is None
