"""Allow-list files and directories, duplicates, unknown and revoked names."""

from __future__ import annotations

import pytest

from splitfed.security import AllowList, Identity, KeyFileError, UnknownClientError


def test_file_with_comments(tmp_path):
    alice, bob = Identity.generate("alice"), Identity.generate("bob")
    path = tmp_path / "clients.txt"
    path.write_text(f"# enrolled clients\n\n{alice.public.to_text()}  # hospital A\n"
                    f"   {bob.public.to_text()}\n# {Identity.generate('eve').public.to_text()}\n")
    allowlist = AllowList.from_file(path)
    assert allowlist.names() == ["alice", "bob"]
    assert "alice" in allowlist and "eve" not in allowlist
    assert allowlist.get("alice") == alice.public
    assert allowlist.get("bob").same_key(bob.public)
    assert AllowList.load(path).names() == ["alice", "bob"]


def test_directory_of_pub_files(tmp_path):
    alice, bob = Identity.generate("alice"), Identity.generate("bob")
    alice.save(tmp_path)
    bob.save(tmp_path)
    (tmp_path / "notes.txt").write_text("not a key")
    allowlist = AllowList.from_directory(tmp_path)
    assert allowlist.names() == ["alice", "bob"]
    assert allowlist.get("bob") == bob.public
    assert AllowList.load(tmp_path).names() == ["alice", "bob"]


def test_duplicate_name_with_other_key_names_file_and_line(tmp_path):
    first, second = Identity.generate("alice"), Identity.generate("alice")
    path = tmp_path / "clients.txt"
    lines = [first.public.to_text(), "# comment", first.public.to_text(), second.public.to_text()]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(KeyFileError, match=r"clients\.txt:4: duplicate name 'alice'.*clients\.txt:1"):
        AllowList.from_file(path)


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "clients.txt"
    path.write_text(f"{Identity.generate('alice').public.to_text()}\nsplitfed-ed25519 AAAA bob\n")
    with pytest.raises(KeyFileError, match=r"clients\.txt:2"):
        AllowList.from_file(path)


def test_missing_file():
    with pytest.raises(KeyFileError, match="not found"):
        AllowList.from_file("/nonexistent/clients.txt")
    with pytest.raises(KeyFileError, match="not found"):
        AllowList.from_directory("/nonexistent")


def test_unknown_and_revoked():
    alice = Identity.generate("alice")
    allowlist = AllowList([alice.public])
    with pytest.raises(UnknownClientError, match="not in the allow-list"):
        allowlist.get("mallory")
    with pytest.raises(UnknownClientError):
        allowlist.get(None)  # type: ignore[arg-type]
    allowlist.revoke("alice")
    assert "alice" not in allowlist and allowlist.names() == [] and len(allowlist) == 0
    with pytest.raises(UnknownClientError, match="revoked"):
        allowlist.get("alice")
    allowlist.add(alice.public)
    with pytest.raises(UnknownClientError, match="revoked"):
        allowlist.get("alice")
    with pytest.raises(UnknownClientError):
        allowlist.revoke("mallory")
