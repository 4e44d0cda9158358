"""The files API (OpenAI's shapes): upload, list, get, download and delete."""

from __future__ import annotations

from flask import Response, jsonify, request, send_file
from flask_openapi3 import APIBlueprint, FileStorage, Tag
from pydantic import BaseModel, ConfigDict

from common.batches.files import file_object
from common.batches.schemas import FileListQuery, FilePath
from web import auth
from web.context import openai_list, services

bp = APIBlueprint(
    "files", __name__, url_prefix="/v1/files", abp_tags=[Tag(name="files")]
)
bp.before_request(auth.require_key_streaming)

#: Room for the multipart envelope around a file of the largest size allowed.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


@bp.before_request
def _allow_file_sized_bodies() -> None:
    """An upload may be as large as a file may be, not just a chat request."""
    if request.method == "POST":
        request.max_content_length = (
            services().settings.file_max_bytes + MULTIPART_OVERHEAD_BYTES
        )


class FileUploadForm(BaseModel):
    """``multipart/form-data``: the JSONL file and its purpose (``batch``)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    file: FileStorage
    purpose: str


@bp.post("")
def upload_file(form: FileUploadForm) -> Response:
    """Upload a batch input file (JSONL), checked line by line as it is stored."""
    row = services().batches.files.upload(
        auth.caller().id, form.file.stream, form.file.filename or "", form.purpose
    )
    return jsonify(file_object(row))


@bp.get("")
def list_files(query: FileListQuery) -> Response:
    """This key's files, newest first, as an OpenAI list."""
    rows, has_more = services().batches.files.page(
        auth.caller().id, query.purpose, query.limit, query.after
    )
    data = [file_object(row) for row in rows]
    return openai_list(data, has_more)


@bp.get("/<file_id>")
def get_file(path: FilePath) -> Response:
    """The file object."""
    row = services().batches.files.get(auth.caller().id, path.file_id)
    return jsonify(file_object(row))


@bp.get("/<file_id>/content")
def file_content(path: FilePath) -> Response:
    """The file's bytes, streamed from disk."""
    files = services().batches.files
    row = files.get(auth.caller().id, path.file_id)
    return send_file(
        files.path(row.id),
        mimetype="application/jsonl",
        as_attachment=True,
        download_name=row.filename,
        conditional=False,
        etag=False,
    )


@bp.delete("/<file_id>")
def delete_file(path: FilePath) -> Response:
    """Delete the file (refused while a running batch reads it)."""
    services().batches.files.delete(auth.caller().id, path.file_id)
    return jsonify({"id": path.file_id, "object": "file", "deleted": True})
