"""Looks at the S3 test server from outside ef-backup (boto3, from the moto venv).

    s3probe.py head BUCKET KEY          -> {"size", "sse", "storage_class", "etag", "lock_mode", "lock_until"}
    s3probe.py get BUCKET KEY FILE      download to FILE
    s3probe.py put BUCKET KEY FILE      upload FILE (plain put)
    s3probe.py list BUCKET PREFIX       -> [keys], without manifests and signatures
    s3probe.py list-all BUCKET PREFIX   -> [keys], all of them
    s3probe.py uploads BUCKET           -> [{"key", "upload_id"}] incomplete multipart uploads
    s3probe.py mkbucket BUCKET [locked] create a bucket (with Object Lock enabled)
    s3probe.py put-locked BUCKET KEY FILE MODE UNTIL
                                        upload FILE under Object Lock until UNTIL (unix seconds)
    s3probe.py deny-delete BUCKET       a bucket policy refusing s3:DeleteObject to everyone
Connection from EF_PROBE_ENDPOINT, EF_PROBE_ACCESS_KEY, EF_PROBE_SECRET_KEY.
"""
import datetime
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
    until = h.get("ObjectLockRetainUntilDate")
    print(json.dumps({"size": h["ContentLength"], "sse": h.get("ServerSideEncryption"),
                      "storage_class": h.get("StorageClass"), "etag": h["ETag"].strip('"'),
                      "lock_mode": h.get("ObjectLockMode"),
                      "lock_until": int(until.timestamp()) if until else None}))
elif cmd == "get":
    c.download_file(args[0], args[1], args[2])
elif cmd == "put":
    c.upload_file(args[2], args[0], args[1])
elif cmd in ("list", "list-all"):
    # `list`: the backups (and anything else) without their manifests and signatures, which
    # only the manifest suite looks at (`list-all`).
    keys = []
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=args[0], Prefix=args[1]):
        keys += [o["Key"] for o in page.get("Contents", [])]
    if cmd == "list":
        keys = [k for k in keys if not (k.endswith(".manifest.json") or k.endswith(".manifest.json.minisig"))]
    print(json.dumps(keys))
elif cmd == "uploads":
    ups = c.list_multipart_uploads(Bucket=args[0]).get("Uploads", [])
    print(json.dumps([{"key": u["Key"], "upload_id": u["UploadId"]} for u in ups]))
elif cmd == "mkbucket":
    c.create_bucket(Bucket=args[0], ObjectLockEnabledForBucket=args[1:] == ["locked"])
elif cmd == "put-locked":
    until = datetime.datetime.fromtimestamp(int(args[4]), datetime.timezone.utc)
    with open(args[2], "rb") as f:
        c.put_object(Bucket=args[0], Key=args[1], Body=f.read(), ObjectLockMode=args[3],
                     ObjectLockRetainUntilDate=until)
elif cmd == "deny-delete":
    c.put_bucket_policy(Bucket=args[0], Policy=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Deny", "Principal": "*", "Action": "s3:DeleteObject",
                       "Resource": f"arn:aws:s3:::{args[0]}/*"}],
    }))
else:
    sys.exit(f"unknown command {cmd}")
