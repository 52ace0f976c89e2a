"""Secrets at rest: a broker password is stored sealed with SCALPER_SECRET_KEY (`enc:v1:...`), or as a reference.

A `password_ref` (broker_accounts) is one of:
- `enc:v1:<Fernet token>`: the password, encrypted and authenticated with the engine's key (docs/security.md);
- `env:NAME`: read from the environment of the process that connects (the executor);
- `file:/path`: read from that file (a container secret);
- anything else: a legacy clear value, from before sealing; it still opens, is reported, and
  `services.decision.accounts.seal_clear_passwords` seals it at start-up.

The key: SCALPER_SECRET_KEY (a Fernet key, or any secret of at least 32 characters; `new,old` to rotate), else in the
embedded mode a key file created once, mode 0600, beside the SQLite database (else REPO_ROOT/var/secret.key). The
distributed mode has no such default: every process that seals or opens a password must be given the same key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from shared.logging import get_logger
from shared.settings import REPO_ROOT, Settings

log = get_logger(__name__)

SEALED_PREFIX = "enc:v1:"
REFERENCE_PREFIXES = ("env:", "file:")
KEY_FILE_NAME = "secret.key"
MIN_PASSPHRASE_CHARS = 32
# broker_accounts.password_ref holds 512 characters; a Fernet token of n bytes is 4*ceil((57 + 16*(n//16 + 1))/3)
# characters: 319 bytes make 504, plus the prefix.
MAX_SEALED_BYTES = 319


class SecretError(ValueError):
    """A secret that cannot be sealed or opened; the message never holds the secret."""


class SecretKeyMissing(SecretError):
    pass


_installed_key: str | None = None


def new_key() -> str:
    return Fernet.generate_key().decode("ascii")


def _fernet(key: str) -> MultiFernet:
    """Each comma-separated part of `key`: a Fernet key as is, or a passphrase of 32+ characters through SHA-256.
    The first part seals; every part opens (rotation: `new,old`, then `seal_clear_passwords` reseals nothing, but a
    password saved again is sealed with the new key)."""
    parts = [p.strip() for p in key.split(",") if p.strip()]
    if not parts:
        raise SecretKeyMissing("SCALPER_SECRET_KEY is empty")
    fernets = []
    for part in parts:
        try:
            if len(base64.urlsafe_b64decode(part.encode("ascii"))) == 32:
                fernets.append(Fernet(part))
                continue
        except (binascii.Error, ValueError, UnicodeEncodeError):
            pass
        if len(part) < MIN_PASSPHRASE_CHARS:
            raise SecretError(
                f"SCALPER_SECRET_KEY: give a Fernet key (python -c 'from cryptography.fernet import Fernet; "
                f"print(Fernet.generate_key().decode())') or a secret of at least {MIN_PASSPHRASE_CHARS} characters"
            )
        fernets.append(Fernet(base64.urlsafe_b64encode(hashlib.sha256(part.encode()).digest())))
    return MultiFernet(fernets)


def is_sealed(ref: str | None) -> bool:
    return bool(ref) and ref.startswith(SEALED_PREFIX)


def is_reference(ref: str | None) -> bool:
    return bool(ref) and ref.startswith(REFERENCE_PREFIXES)


def is_clear(ref: str | None) -> bool:
    """A stored value that is neither sealed nor a reference: a password in clear."""
    return bool(ref) and not is_sealed(ref) and not is_reference(ref)


def seal(plaintext: str, key: str) -> str:
    """`enc:v1:<token>`: `plaintext` encrypted and authenticated (Fernet: AES-128-CBC, HMAC-SHA256) under `key`."""
    data = plaintext.encode("utf-8")
    if len(data) > MAX_SEALED_BYTES:
        raise SecretError(f"a password of at most {MAX_SEALED_BYTES} bytes can be stored sealed")
    return SEALED_PREFIX + _fernet(key).encrypt(data).decode("ascii")


def unseal(ref: str, key: str) -> str:
    try:
        return _fernet(key).decrypt(ref.removeprefix(SEALED_PREFIX).encode("ascii")).decode("utf-8")
    except (InvalidToken, UnicodeError) as exc:
        raise SecretError("a sealed password does not open with SCALPER_SECRET_KEY (another key sealed it, or it was "
                          "changed)") from exc


def stored_form(password: str | None, key: str | None = None) -> str | None:
    """What broker_accounts stores for a password given by a person: a reference as it is, a literal sealed.

    An `enc:v1:` value is kept only when it opens with the key (a row copied from this engine)."""
    if password is None:
        return None
    if is_reference(password):
        return password
    key = key or current_key()
    if is_sealed(password):
        unseal(password, key)
        return password
    return seal(password, key)


def open_secret(ref: str | None, settings: Settings | None = None, *, key: str | None = None) -> str | None:
    """The secret a `password_ref` names: unsealed, read from the environment or a file, or a legacy clear value."""
    if not ref:
        return None
    if ref.startswith("env:"):
        return os.environ.get(ref[4:])
    if ref.startswith("file:"):
        return Path(ref[5:]).read_text(encoding="utf-8").strip()
    if is_sealed(ref):
        if key is None and settings is not None and settings.secret_key is not None:
            key = settings.secret_key.get_secret_value()
        return unseal(ref, key or current_key(settings))
    log.warning("a broker account password is stored in clear; decision seals it at its next start (docs/security.md)")
    return ref


def key_file_path(settings: Settings) -> Path:
    """var/secret.key beside the SQLite database file, else under REPO_ROOT/var (an in-memory or PostgreSQL URL)."""
    url = settings.database_url
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[1] if ":///" in url else ""
        path = path.split("?", 1)[0]
        if path and path != ":memory:":
            return Path(path).expanduser().resolve().parent / KEY_FILE_NAME
    return REPO_ROOT / "var" / KEY_FILE_NAME


def _read_or_create_key_file(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            os.chmod(path, 0o600)
            log.warning("the secret key file was readable by others; its mode is now 0600", path=str(path), was=oct(mode))
        key = path.read_text(encoding="ascii").strip()
        _fernet(key)  # a damaged file is an error, never a silent new key (the sealed passwords would not open)
        return key
    key = new_key()
    with os.fdopen(fd, "w", encoding="ascii") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(key + "\n")
    log.info("secret key file created (mode 0600): keep it with the database, the MT5 passwords open with it only",
             path=str(path))
    return key


def key_for(settings: Settings, *, embedded: bool) -> str:
    """The key that seals and opens passwords in this process, which later calls without a key use.

    SCALPER_SECRET_KEY; else, embedded, the key file (made on first start, mode 0600); else SecretKeyMissing."""
    global _installed_key
    if settings.secret_key is not None and settings.secret_key.get_secret_value().strip():
        key = settings.secret_key.get_secret_value().strip()
    elif embedded:
        key = _read_or_create_key_file(key_file_path(settings))
    else:
        raise SecretKeyMissing(
            "SCALPER_SECRET_KEY is required in distributed mode: give decision and every executor the same key "
            "(docs/security.md)"
        )
    _fernet(key)  # a bad key fails at start, not at the first password
    _installed_key = key
    return key


def current_key(settings: Settings | None = None) -> str:
    """The key `key_for` chose in this process; else found as it would (embedded: a memory:// bus)."""
    if _installed_key is not None:
        return _installed_key
    if settings is None:
        from shared.settings import get_settings

        settings = get_settings()
    return key_for(settings, embedded=settings.bus_url.startswith("memory://"))
