"""The shared S3 test fixtures talk to a real S3 API server (moto on 127.0.0.1)."""

import os

import boto3
import pytest

pytestmark = pytest.mark.s3


def test_bucket_round_trip_through_plain_boto3(s3_bucket):
    # A client built the ordinary way (no endpoint argument) finds the server through the env.
    assert os.environ["AWS_ENDPOINT_URL"] == s3_bucket.server.endpoint_url
    assert s3_bucket.server.endpoint_url.startswith("http://127.0.0.1:")
    s3 = boto3.client("s3")
    s3.put_object(Bucket=s3_bucket.name, Key="a/b.bin", Body=b"\x00\x01payload")
    assert s3_bucket.keys() == ["a/b.bin"]
    assert s3_bucket.get("a/b.bin") == b"\x00\x01payload"
    names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert s3_bucket.name in names


def test_each_test_gets_a_fresh_empty_bucket(s3_bucket):
    assert s3_bucket.keys() == []


def test_server_alone_leaves_the_environment_alone(s3_server):
    assert os.environ.get("AWS_ENDPOINT_URL") != s3_server.endpoint_url
    assert s3_server.env["MLFLOW_S3_ENDPOINT_URL"] == s3_server.endpoint_url
