def test_openmrs_db(openmrs_db, services):
    a = openmrs_db("site1")
    b = openmrs_db("central", name="t_fixture_named")
    for p in (a, b):
        with p.connect() as c, c.cursor() as cur:
            cur.execute("select count(*) from information_schema.tables where table_schema=%s", (p.database,))
            print(p.describe(), cur.fetchone())
    test_openmrs_db.dbs = (a, b)

def test_dropped(services):
    for p in test_openmrs_db.dbs:
        with p.with_database(None).connect() as c, c.cursor() as cur:
            cur.execute("show databases like %s", (p.database,))
            assert cur.fetchall() == ()
