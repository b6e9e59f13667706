"""Looks at the S3 test server from outside ef-backup (boto3, from the moto venv).

    s3probe.py head BUCKET KEY          -> {"size", "sse", "storage_class", "etag"}
    s3probe.py get BUCKET KEY FILE      download to FILE
    s3probe.py put BUCKET KEY FILE      upload FILE (plain put)
    s3probe.py list BUCKET PREFIX       -> [keys]
    s3probe.py uploads BUCKET           -> [{"key", "upload_id"}] incomplete multipart uploads
Connection from EF_PROBE_ENDPOINT, EF_PROBE_ACCESS_KEY, EF_PROBE_SECRET_KEY.
"""
import json
import os
import sys

import boto3
from botocore.config import Config

c = boto3.client(
    "s3",
    endpoint_url=os.environ["EF_PROBE_ENDPOINT"],
    region_name="us-east-1",
    aws_access_key_id=os.environ["EF_PROBE_ACCESS_KEY"],
    aws_secret_access_key=os.environ["EF_PROBE_SECRET_KEY"],
    config=Config(s3={"addressing_style": "path"}),
)
cmd, args = sys.argv[1], sys.argv[2:]
if cmd == "head":
    h = c.head_object(Bucket=args[0], Key=args[1])
    print(json.dumps({"size": h["ContentLength"], "sse": h.get("ServerSideEncryption"),
                      "storage_class": h.get("StorageClass"), "etag": h["ETag"].strip('"')}))
elif cmd == "get":
    c.download_file(args[0], args[1], args[2])
elif cmd == "put":
    c.upload_file(args[2], args[0], args[1])
elif cmd == "list":
    keys = []
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=args[0], Prefix=args[1]):
        keys += [o["Key"] for o in page.get("Contents", [])]
    print(json.dumps(keys))
elif cmd == "uploads":
    ups = c.list_multipart_uploads(Bucket=args[0]).get("Uploads", [])
    print(json.dumps([{"key": u["Key"], "upload_id": u["UploadId"]} for u in ups]))
else:
    sys.exit(f"unknown command {cmd}")
