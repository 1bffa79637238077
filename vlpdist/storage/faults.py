"""What a storage error is: transient (retry it), denied, a missing bucket or object, or
permanent, from botocore's error codes and HTTP statuses, the exception chain's class
names (aiohttp, botocore, fsspec) and OS errno values."""

from __future__ import annotations

import errno

TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeoutException",
    "InternalError",
    "ServiceUnavailable",
    "503",
    "500",
    "502",
    "504",
}
DENIED_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"}
TRANSIENT_ERRNOS = {errno.ECONNRESET, errno.ETIMEDOUT, errno.EPIPE, errno.ECONNABORTED}


def client_error_info(exc: BaseException) -> tuple[str | None, int | None]:
    """Walk the cause chain for a botocore ClientError: (code, http status)."""
    seen = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        response = getattr(cur, "response", None)
        if isinstance(response, dict) and "Error" in response:
            code = response["Error"].get("Code")
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return (str(code) if code is not None else None), status
        cur = cur.__cause__ or cur.__context__
    return None, None


def _chain_names(exc: BaseException) -> set[str]:
    names, cur, seen = set(), exc, set()
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        names.update(c.__name__ for c in type(cur).__mro__)
        cur = cur.__cause__ or cur.__context__
    return names


def classify(exc: BaseException) -> str:
    """'transient', 'denied', 'missing_bucket', 'not_found' or 'permanent'."""
    code, status = client_error_info(exc)
    if code == "NoSuchBucket":
        return "missing_bucket"
    if code in DENIED_CODES or status == 403 or isinstance(exc, PermissionError):
        return "denied"
    if code in TRANSIENT_CODES or (status is not None and status >= 500) or status == 429:
        return "transient"
    if code in {"NoSuchKey", "404", "NotFound"} or isinstance(exc, FileNotFoundError):
        return "not_found"
    names = _chain_names(exc)
    transient_names = {
        "ConnectionError",
        "TimeoutError",
        "ClientConnectionError",  # aiohttp
        "ServerDisconnectedError",
        "ClientPayloadError",
        "EndpointConnectionError",  # botocore
        "ConnectionClosedError",
        "ReadTimeoutError",
        "ConnectTimeoutError",
        "ResponseStreamingError",
        "IncompleteReadError",
        "HTTPClientError",
        "FSTimeoutError",  # fsspec
        "IncompleteRead",  # http.client
    }
    if names & transient_names:
        return "transient"
    if isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS:
        return "transient"
    return "permanent"
