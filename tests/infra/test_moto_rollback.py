"""infra.moto_rollback: TransactWriteItems stays all-or-nothing while only the named items are backed up."""

from __future__ import annotations

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.dynamodb import models as moto_models

from infra import moto_rollback

TABLE = "budgets"


def _n(value: int) -> dict[str, str]:
    return {"N": str(value)}


def _key(tenant: str, sk: str) -> dict[str, dict[str, str]]:
    return {"tenant_id": {"S": tenant}, "sk": {"S": sk}}


@pytest.fixture
def plain_client():
    """moto as it is, with two period rows."""
    with mock_aws():
        dynamodb = boto3.client("dynamodb", region_name="us-east-1")
        dynamodb.create_table(
            TableName=TABLE,
            KeySchema=[
                {"AttributeName": "tenant_id", "KeyType": "HASH"},
                {"AttributeName": "sk", "KeyType": "RANGE"},
            ],
            AttributeDefinitions=[
                {"AttributeName": "tenant_id", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "S"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        dynamodb.put_item(TableName=TABLE, Item={**_key("t", "day"), "remaining": _n(10)})
        dynamodb.put_item(TableName=TABLE, Item={**_key("t", "other"), "remaining": _n(1)})
        yield dynamodb


@pytest.fixture
def client(plain_client):
    with moto_rollback.installed():
        yield plain_client


def _charge(dynamodb, key: str, units: int, *, other_units: int = 0) -> None:
    """A charge record's conditional put and two conditional deductions, as one transaction."""
    dynamodb.transact_write_items(
        TransactItems=[
            {
                "Put": {
                    "TableName": TABLE,
                    "Item": {**_key("t", f"charge#{key}"), "units": _n(units)},
                    "ConditionExpression": "attribute_not_exists(sk)",
                }
            },
            {
                "Update": {
                    "TableName": TABLE,
                    "Key": _key("t", "day"),
                    "UpdateExpression": "SET remaining = remaining - :u",
                    "ConditionExpression": "remaining >= :u",
                    "ExpressionAttributeValues": {":u": _n(units)},
                }
            },
            {
                "Update": {
                    "TableName": TABLE,
                    "Key": _key("t", "other"),
                    "UpdateExpression": "SET remaining = remaining - :u",
                    "ConditionExpression": "remaining >= :u",
                    "ExpressionAttributeValues": {":u": _n(other_units)},
                }
            },
        ]
    )


def _remaining(dynamodb, sk: str) -> int | None:
    item = dynamodb.get_item(TableName=TABLE, Key=_key("t", sk), ConsistentRead=True).get("Item")
    return None if item is None else int(item["remaining"]["N"])


def _table_object():
    backend = moto_models.dynamodb_backends["123456789012"]["us-east-1"]
    return backend.tables[TABLE]


def test_a_successful_transaction_applies_every_item(client):
    _charge(client, "k1", 4)
    assert _remaining(client, "day") == 6
    assert client.get_item(TableName=TABLE, Key=_key("t", "charge#k1"))["Item"]["units"] == _n(4)


def test_a_failed_item_undoes_the_items_before_it_without_copying_the_table(client):
    table = _table_object()
    with pytest.raises(ClientError) as refused:
        _charge(client, "k1", 4, other_units=2)  # the third item's condition fails (1 < 2)
    assert refused.value.response["Error"]["Code"] == "TransactionCanceledException"
    # the put record is gone again and the deduction undone: all or nothing, as in DynamoDB
    assert "Item" not in client.get_item(TableName=TABLE, Key=_key("t", "charge#k1"))
    assert _remaining(client, "day") == 10
    assert _remaining(client, "other") == 1
    # moto's own rollback swaps in a deep copy of the table; the item-level one keeps the table object
    assert _table_object() is table


def test_a_condition_failure_on_an_existing_record_keeps_it_as_it_was(client):
    _charge(client, "k1", 4)
    with pytest.raises(ClientError):
        _charge(client, "k1", 3)  # the charge record exists: the put's condition fails
    assert _remaining(client, "day") == 6
    assert client.get_item(TableName=TABLE, Key=_key("t", "charge#k1"))["Item"]["units"] == _n(4)


def test_moto_itself_rolls_back_by_table_copy(plain_client):
    """What the identity check above tells apart: moto's own rollback puts a copy of the table back."""
    table = _table_object()
    with pytest.raises(ClientError):
        _charge(plain_client, "k1", 4, other_units=2)
    assert _table_object() is not table
    assert _remaining(plain_client, "day") == 10


def test_the_block_restores_what_was_there_before_it(plain_client):
    own_function, own_copy = moto_models.DynamoDBBackend.transact_write_items, moto_models.copy
    with moto_rollback.installed():
        outer = moto_models.DynamoDBBackend.transact_write_items
        with moto_rollback.installed():
            pass
        assert moto_models.DynamoDBBackend.transact_write_items is outer
        assert moto_models.copy is not own_copy
    assert moto_models.DynamoDBBackend.transact_write_items is own_function
    assert moto_models.copy is own_copy
