

def test_cdc_keys_are_the_primary_keys_of_the_eligible_tables() -> None:
    from tidb_pipeline.workload.schema import CDC_KEYS, INELIGIBLE_FOR_CDC, TABLES

    assert set(CDC_KEYS) == set(TABLES) - INELIGIBLE_FOR_CDC
    assert CDC_KEYS["order_line"] == ("ol_w_id", "ol_d_id", "ol_o_id", "ol_number")
    assert CDC_KEYS["warehouse"] == ("w_id",)
    assert all(CDC_KEYS.values())
