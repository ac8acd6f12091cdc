//! A fresh PostgreSQL database per test.

/// A fresh PostgreSQL database for one test, dropped when this is dropped,
/// so that tests run in parallel without seeing each other's data.
pub struct PgDb {
    /// `postgres://.../sb_test_<random>`.
    pub url: String,
    name: String,
    admin_url: String,
}

impl PgDb {
    /// A fresh database on the server named by `SWITCHBOARD_TEST_POSTGRES_URL`.
    ///
    /// Without that variable this returns `None` after printing why (a
    /// laptop without PostgreSQL). With it, an unreachable server is a
    /// failure under `CI=true` (CI must never skip these tests) and a
    /// printed skip elsewhere.
    pub async fn create() -> Option<Self> {
        let in_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        let Some(admin_url) = std::env::var("SWITCHBOARD_TEST_POSTGRES_URL")
            .ok()
            .filter(|u| !u.is_empty())
        else {
            assert!(
                !in_ci,
                "CI=true but SWITCHBOARD_TEST_POSTGRES_URL is not set: the PostgreSQL tests must run in CI"
            );
            eprintln!("skipped: set SWITCHBOARD_TEST_POSTGRES_URL to run the PostgreSQL tests");
            return None;
        };
        use sqlx::Connection;
        let mut conn = match sqlx::PgConnection::connect(&admin_url).await {
            Ok(c) => c,
            Err(e) if in_ci => panic!("PostgreSQL at {admin_url} is unreachable under CI: {e}"),
            Err(e) => {
                eprintln!("skipped: PostgreSQL at {admin_url} is unreachable: {e}");
                return None;
            }
        };
        let name = format!("sb_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let _ = conn.close().await;
        let url = match admin_url.rfind('/') {
            Some(i) if admin_url[..i].ends_with(|c: char| c != '/') => {
                let rest = &admin_url[i + 1..];
                let query = rest.find('?').map(|q| &rest[q..]).unwrap_or("");
                format!("{}/{name}{query}", &admin_url[..i])
            }
            _ => format!("{}/{name}", admin_url.trim_end_matches('/')),
        };
        Some(PgDb {
            url,
            name,
            admin_url,
        })
    }

    /// Run one SQL statement on the server's admin database (to cut
    /// connections, inspect `pg_stat_activity`, ...).
    pub async fn admin_exec(&self, sql: &str) -> u64 {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&self.admin_url)
            .await
            .expect("connect admin");
        let done = sqlx::query(sql).execute(&mut conn).await.expect(sql);
        let _ = conn.close().await;
        done.rows_affected()
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        // Drop runs outside async; a short-lived runtime on its own thread
        // does the cleanup without blocking the test's runtime.
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin_url).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                    let _ = conn.close().await;
                }
            });
        })
        .join();
    }
}
