"""Push a published version to the Hugging Face Hub: one commit with the version's files, tagged with the
version. The token comes from the environment variable the config names and is never written or logged."""

from __future__ import annotations

import os
from pathlib import Path

from pilot_core.errors import JobFailed, UserError
from release.config import HubConfig


def push_version(version_dir: str | Path, hub: HubConfig) -> dict:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    version_dir = Path(version_dir)
    token = os.environ.get(hub.token_env)
    if not token:
        raise UserError(f"hub push: the environment variable {hub.token_env} (the Hub token) is not set")
    api = HfApi(endpoint=hub.endpoint, token=token)
    tag = version_dir.name
    try:
        api.create_repo(hub.repo_id, private=hub.private, exist_ok=True)
        commit = api.upload_folder(repo_id=hub.repo_id, folder_path=str(version_dir),
                                   commit_message=f"{version_dir.parent.name} {tag}")
        api.create_tag(hub.repo_id, tag=tag, revision=commit.oid, tag_message=f"pilot release {tag}")
    except HfHubHTTPError as e:  # the message carries the status and the server's reason, never the token
        raise JobFailed(f"hub push to {hub.repo_id} failed: {str(e).splitlines()[0]}") from None
    return {"repo_id": hub.repo_id, "tag": tag, "commit": commit.oid}
