"""Sets up moto's server (running with authentication off) as an AWS
account for the SigV4 tests, with unmodified boto3, then turns moto's
authentication on: from then on every request must be signed by a known
access key, and is allowed only by that identity's IAM policies.

usage: aws_setup.py ENDPOINT CA_PEM

Prints JSON: the access keys of `agentguard-base` (ec2 Describe*, s3 reads
on the `reports` bucket, writes under its `uploads/`, sts:AssumeRole) and
`role-only` (sts:AssumeRole
only), and the ARN of role `inventory` (ec2 Describe* only).
"""

import json
import sys
import urllib.request
import ssl

import boto3

endpoint, ca = sys.argv[1], sys.argv[2]
kw = dict(endpoint_url=endpoint, verify=ca, region_name="eu-west-1",
          aws_access_key_id="setup", aws_secret_access_key="setup")
iam = boto3.client("iam", **kw)
s3 = boto3.client("s3", config=boto3.session.Config(s3={"addressing_style": "path"}), **kw)


def policy(*statements):
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def allow(actions, resource="*"):
    return {"Effect": "Allow", "Action": actions, "Resource": resource}


out = {}
for user, doc in [
    ("agentguard-base", policy(
        allow(["ec2:DescribeInstances", "ec2:DescribeRegions"]),
        allow(["s3:GetObject", "s3:ListBucket"], ["arn:aws:s3:::reports", "arn:aws:s3:::reports/*"]),
        allow(["s3:PutObject"], ["arn:aws:s3:::reports/uploads/*"]),
        allow(["sts:AssumeRole"]),
    )),
    ("role-only", policy(allow(["sts:AssumeRole"]))),
]:
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    iam.put_user_policy(UserName=user, PolicyName="p", PolicyDocument=doc)
    out[user] = {"id": key["AccessKeyId"], "secret": key["SecretAccessKey"]}

trust = policy({"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": ["sts:AssumeRole", "sts:SetSourceIdentity", "sts:TagSession"]})
role = iam.create_role(RoleName="inventory", AssumeRolePolicyDocument=trust)["Role"]
iam.put_role_policy(RoleName="inventory", PolicyName="p",
                    PolicyDocument=policy(allow(["ec2:DescribeInstances", "ec2:DescribeRegions"])))
out["role_arn"] = role["Arn"]

s3.create_bucket(Bucket="reports", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
s3.put_object(Bucket="reports", Key="2024/q1.csv", Body=b"region,total\neu,42\n")
s3.put_object(Bucket="reports", Key="private/payroll.csv", Body=b"name,salary\n")

# Authentication on, from the next request.
ctx = ssl.create_default_context(cafile=ca)
# A plain body: werkzeug would read a form-encoded one as a form.
req = urllib.request.Request(endpoint + "/moto-api/reset-auth", data=b"0", method="POST",
                             headers={"Content-Type": "text/plain"})
with urllib.request.urlopen(req, context=ctx) as r:
    assert r.status == 200
print(json.dumps(out))
