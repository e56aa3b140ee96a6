from tests.harness import Harness


async def test_health_reports_database_ok(server: Harness) -> None:
    response = await server.client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "database": "ok",
        "push": {"apns": "off", "fcm": "off"},
    }
