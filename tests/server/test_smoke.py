from tests.harness import Harness, assert_error


async def test_health_reports_database_ok(server: Harness) -> None:
    response = await server.client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "database": "ok",
        "bus": "off",  # one process in the test: no bus (tests/harness.py)
        "push": {"apns": "off", "fcm": "off"},
    }


async def test_operator_endpoints_are_off_without_a_token(server: Harness) -> None:
    response = await server.client.get("/v1/operator/push")
    assert_error(response, 404, "not_found")
