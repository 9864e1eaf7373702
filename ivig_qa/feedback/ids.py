"""Answer ids as handed to clients, signed, so only answers this service gave can be rated."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets


class AnswerIds:
    """Answer ids as handed to clients: ``<id>-<mac>``, an HMAC of the id with a secret.

    ``verify`` gives back the plain id only for ids this server (or one with the same
    secret) signed, so feedback cannot be filed for answers that were never given. The
    default secret is random per process; servers behind one load balancer share one.
    """

    MAC_CHARS = 20

    def __init__(self, secret: str | None = None) -> None:
        self._key = (secret or secrets.token_hex(32)).encode()

    def _mac(self, answer_id: str) -> str:
        return hmac.new(self._key, answer_id.encode(), hashlib.sha256).hexdigest()[: self.MAC_CHARS]

    def sign(self, answer_id: str) -> str:
        return f"{answer_id}-{self._mac(answer_id)}"

    def verify(self, signed: str) -> str | None:
        """The plain answer id of a signed one, or None when the signature does not match."""
        answer_id, _, mac = signed.rpartition("-")
        if not answer_id or not re.fullmatch(r"[0-9a-f]+", mac):
            return None
        return answer_id if hmac.compare_digest(mac, self._mac(answer_id)) else None
