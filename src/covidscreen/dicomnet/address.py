"""``HOST:PORT:AET``: where a DICOM node listens and which application entity title it answers to."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError

FORMAT = "HOST:PORT:AET (e.g. 127.0.0.1:4242:ORTHANC)"


def check_ae_title(title: str, what: str = "AE title") -> str:
    """An AE title as DICOM allows it: 1-16 characters, printable ASCII without backslash, not only spaces."""
    if not isinstance(title, str) or not title.strip() or len(title) > 16 or "\\" in title or not all(
            32 <= ord(c) < 127 for c in title):
        raise ConfigError(f"{what} {title!r} is invalid: use 1-16 printable ASCII characters without a backslash")
    return title.strip()


@dataclass(frozen=True)
class AeAddress:
    """A remote application entity."""

    host: str
    port: int
    ae_title: str

    @classmethod
    def parse(cls, text: str) -> AeAddress:
        """``HOST:PORT:AET`` (an IPv6 host in brackets: ``[::1]:104:PACS``).

        Raises:
            ConfigError: the text is not of that form, the port is not 1-65535 or the AE title is invalid.
        """
        host, sep, rest = str(text).rpartition(":")
        host, sep2, port = host.rpartition(":") if sep else ("", "", "")
        if not sep or not sep2 or not host or not port or not rest:
            raise ConfigError(f"destination {text!r} is invalid: expected {FORMAT}")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"destination {text!r} has an invalid port {port!r}: expected 1-65535 ({FORMAT})")
        return cls(host, int(port), check_ae_title(rest, f"AE title of destination {text!r}"))

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}:{self.ae_title}"
