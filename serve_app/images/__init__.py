"""Untrusted image input: raw bytes, base64 and data URIs, guarded URL fetching, resizing."""
