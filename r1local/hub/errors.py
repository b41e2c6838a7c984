"""What huggingface_hub and its HTTP client raise, as one r1local line that says what to do.

HF_TOKEN, HF_ENDPOINT and HF_HUB_OFFLINE are huggingface_hub's own settings; the messages
name them because they are the fix.
"""

from __future__ import annotations

from r1local.errors import NetworkError, R1LocalError


def endpoint() -> str:
    """The hub being talked to (HF_ENDPOINT, or huggingface.co)."""
    from huggingface_hub import constants

    return constants.ENDPOINT


def hub_error(err: BaseException, repo: str, what: str) -> R1LocalError:
    """``err``, raised while asking ``repo`` for ``what`` (a file name, "the model listing")."""
    import httpx2  # huggingface_hub's HTTP client: its errors are those of a dead connection
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, OfflineModeIsEnabled,
                                        RemoteEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    first_line = str(err).splitlines()[0] if str(err) else ""
    # most specific first: GatedRepoError is a RepositoryNotFoundError, the not-found ones
    # are HfHubHTTPErrors, and OfflineModeIsEnabled is a ConnectionError
    if isinstance(err, OfflineModeIsEnabled):
        return NetworkError(f"HF_HUB_OFFLINE is set, and {what} is not in the Hugging Face "
                            "cache", hint="unset HF_HUB_OFFLINE to download it")
    if isinstance(err, GatedRepoError):
        return NetworkError(f"{repo} is gated: the hub refused {what} without access",
                            hint="accept its terms on the model page, then set "
                                 "HF_TOKEN=hf_... (a token from huggingface.co/settings/tokens)")
    if isinstance(err, RepositoryNotFoundError):
        return NetworkError(f"{repo} was not found on {endpoint()}, or it is private",
                            hint="if it is private, set HF_TOKEN=hf_... with access to it")
    if isinstance(err, RevisionNotFoundError):
        return NetworkError(f"{repo} has no such revision ({what})")
    if isinstance(err, RemoteEntryNotFoundError):
        return NetworkError(f"{what} is not in {repo} on {endpoint()}",
                            hint="the catalog may be out of date; try another quant "
                                 "(`r1local hw` lists them) or --from-source")
    if isinstance(err, HfHubHTTPError):
        status = getattr(getattr(err, "response", None), "status_code", "?")
        if status in (401, 403):
            return NetworkError(f"{endpoint()} refused {what} (HTTP {status})",
                                hint="set HF_TOKEN=hf_... with access to the repo")
        return NetworkError(f"{endpoint()} answered HTTP {status} for {what}",
                            hint="try again later")
    if isinstance(err, (httpx2.TransportError, ConnectionError, TimeoutError)):
        return NetworkError(
            f"cannot reach {endpoint()} for {what} ({type(err).__name__}"
            f"{': ' + first_line if first_line else ''})",
            hint="check the network (or HF_ENDPOINT); with HF_HUB_OFFLINE=1 only files "
                 "already downloaded are used")
    return NetworkError(f"downloading {what} failed: {type(err).__name__}: {first_line}")
