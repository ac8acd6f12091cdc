//! The Phase 1 part of the store suite ([`switchboard::store::ProjectStore`]),
//! run against both backends by `both!` in `tests/store.rs`, and the
//! PostgreSQL-only checks: several stores (nodes) numbering tasks of one
//! project at once, and the Phase 1 migration reaching a database created
//! before it.

use std::collections::BTreeSet;
use std::sync::Arc;

use switchboard::audit::{NewAudit, kind};
use switchboard::event::now;
use switchboard::project::{Execution, Priority, Project, ProjectStatus, ProjectTask, WorkStatus};
use switchboard::runtime::audit::verify_store;
use switchboard::store::{AuditQuery, Store};
use switchboard::task::TaskState;
use uuid::Uuid;

/// A project to store (its id is assigned by the store).
pub fn project(key: &str) -> Project {
    let at = now();
    Project {
        id: 0,
        name: format!("Project {key}"),
        key: key.into(),
        description: Some("d".into()),
        status: ProjectStatus::Active,
        github_repo_url: Some("https://github.com/octo/portal".into()),
        telegram_chat_id: None,
        created_at: at,
        updated_at: at,
    }
}

/// A task of `project_id` to store (id, number and key come from the store).
pub fn ptask(project_id: i64, title: &str) -> ProjectTask {
    let at = now();
    ProjectTask {
        id: 0,
        project_id,
        project_key: String::new(),
        number: 0,
        title: title.into(),
        description: None,
        status: WorkStatus::Todo,
        priority: Priority::Medium,
        assigned_agent_type: None,
        agent_execution_status: None,
        created_at: at,
        updated_at: at,
    }
}

/// One audit record to commit with a write (creates get their resource
/// from the store, which assigns the id).
fn audited(event_type: &'static str) -> Vec<NewAudit> {
    vec![NewAudit::by(None, event_type, "test").for_user("admin")]
}

/// One audit record about an existing row.
fn audited_on(event_type: &'static str, resource: &str, id: i64) -> Vec<NewAudit> {
    vec![
        NewAudit::by(None, event_type, "test")
            .for_user("admin")
            .resource(resource, id),
    ]
}

/// Projects: stored and read back exactly, listed by id with paging, a taken
/// key is a `conflict` on create and on update, a missing row is `false`,
/// and every write leaves its audit record in the verified chain.
pub async fn projects_round_trip_and_conflict(store: Arc<dyn Store>) {
    let a = store
        .create_project(&project("AAA"), audited(kind::PROJECT_CREATED))
        .await
        .unwrap();
    assert!(a.id > 0);
    assert_eq!(store.get_project(a.id).await.unwrap(), Some(a.clone()));
    let b = store
        .create_project(&project("BBB"), audited(kind::PROJECT_CREATED))
        .await
        .unwrap();
    assert!(b.id > a.id);
    assert!(store.get_project(b.id + 100).await.unwrap().is_none());

    let err = store
        .create_project(&project("AAA"), audited(kind::PROJECT_CREATED))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "conflict");
    let keys = |list: Vec<Project>| list.into_iter().map(|p| p.key).collect::<Vec<_>>();
    assert_eq!(
        keys(store.list_projects(0, 10).await.unwrap()),
        ["AAA", "BBB"]
    );
    assert_eq!(keys(store.list_projects(1, 10).await.unwrap()), ["BBB"]);
    assert_eq!(keys(store.list_projects(0, 1).await.unwrap()), ["AAA"]);

    let changed = Project {
        name: "Renamed".into(),
        status: ProjectStatus::OnHold,
        description: None,
        github_repo_url: None,
        telegram_chat_id: Some("-100".into()),
        updated_at: now(),
        ..a.clone()
    };
    let audit = audited_on(kind::PROJECT_UPDATED, "project", a.id);
    assert!(store.update_project(&changed, audit).await.unwrap());
    assert_eq!(
        store.get_project(a.id).await.unwrap(),
        Some(changed.clone())
    );
    let clash = Project {
        key: "BBB".into(),
        ..changed.clone()
    };
    let err = store
        .update_project(&clash, audited(kind::PROJECT_UPDATED))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "conflict");
    assert_eq!(store.get_project(a.id).await.unwrap(), Some(changed));
    let ghost = Project {
        id: b.id + 100,
        key: "GHOST".into(),
        ..a
    };
    assert!(
        !store
            .update_project(&ghost, audited(kind::PROJECT_UPDATED))
            .await
            .unwrap()
    );
    assert!(
        !store
            .delete_project(ghost.id, audited(kind::PROJECT_DELETED))
            .await
            .unwrap()
    );

    // Two creates and one update were stored with their audit; the refused
    // and missing ones left nothing.
    let q = AuditQuery {
        resource_type: Some("project".into()),
        limit: 10,
        ..Default::default()
    };
    let trail: Vec<_> = store
        .audit_query(&q)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.event_type, r.resource_id))
        .collect();
    let (ida, idb) = (Some(a.id.to_string()), Some(b.id.to_string()));
    assert_eq!(
        trail,
        [
            (kind::PROJECT_UPDATED.to_owned(), ida.clone()),
            (kind::PROJECT_CREATED.to_owned(), idb),
            (kind::PROJECT_CREATED.to_owned(), ida),
        ]
    );
    assert!(verify_store(store.as_ref()).await.unwrap().ok);
}

/// Tasks are numbered per project, read back with their project's key
/// (which follows a renamed project), listed per project or all, updated,
/// followed by an execution, and deleted; a task for a missing project is
/// `None`; deleting a project takes its tasks and their executions along.
pub async fn project_tasks_number_follow_and_cascade(store: Arc<dyn Store>) {
    let a = store.create_project(&project("A"), vec![]).await.unwrap();
    let b = store.create_project(&project("B"), vec![]).await.unwrap();
    let mut made = Vec::new();
    for pid in [a.id, b.id, a.id] {
        let t = store
            .create_project_task(&ptask(pid, "Do it"), audited(kind::PROJECT_TASK_CREATED))
            .await
            .unwrap()
            .expect("the project exists");
        made.push(t);
    }
    let keys: Vec<_> = made.iter().map(ProjectTask::key).collect();
    assert_eq!(keys, ["A-1", "B-1", "A-2"]);
    assert_eq!(made[0].title, "Do it");
    assert_eq!(
        store.get_project_task(made[2].id).await.unwrap(),
        Some(made[2].clone())
    );
    assert!(
        store
            .create_project_task(&ptask(b.id + 100, "x"), vec![])
            .await
            .unwrap()
            .is_none()
    );
    let ids = |list: Vec<ProjectTask>| list.into_iter().map(|t| t.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.list_project_tasks(Some(a.id), 0, 10).await.unwrap()),
        [made[0].id, made[2].id]
    );
    assert_eq!(
        store.list_project_tasks(None, 0, 10).await.unwrap().len(),
        3
    );
    assert_eq!(
        ids(store.list_project_tasks(None, 1, 1).await.unwrap()),
        [made[1].id]
    );

    let edited = ProjectTask {
        title: "Done it".into(),
        description: Some("with care".into()),
        status: WorkStatus::Done,
        priority: Priority::Critical,
        assigned_agent_type: Some("echo".into()),
        updated_at: now(),
        ..made[0].clone()
    };
    let audit = audited_on(kind::PROJECT_TASK_UPDATED, "project_task", edited.id);
    assert!(store.update_project_task(&edited, audit).await.unwrap());
    assert_eq!(
        store.get_project_task(edited.id).await.unwrap(),
        Some(edited.clone())
    );

    // Renaming the project renames its tasks' keys.
    let renamed = Project {
        key: "AX".into(),
        ..a.clone()
    };
    assert!(store.update_project(&renamed, vec![]).await.unwrap());
    let t = store.get_project_task(made[2].id).await.unwrap().unwrap();
    assert_eq!(t.key(), "AX-2");

    // An execution, and the task following its engine state.
    let engine_task_id = Uuid::new_v4();
    let execution = Execution {
        id: 0,
        task_id: edited.id,
        engine_task_id,
        execution_uuid: Uuid::new_v4(),
        user_id: "admin".into(),
        agent_type: "echo".into(),
        prompt: "hi".into(),
        started_at: now(),
    };
    let first = store.create_execution(&execution).await.unwrap();
    let again = Execution {
        engine_task_id: Uuid::new_v4(),
        ..execution.clone()
    };
    assert!(store.create_execution(&again).await.unwrap() > first);
    // One engine task runs one execution.
    let twice = store.create_execution(&execution).await.unwrap_err();
    assert_eq!(twice.code(), "conflict");
    let at = now();
    assert!(
        store
            .follow_project_task(edited.id, WorkStatus::InReview, TaskState::Completed, at)
            .await
            .unwrap()
    );
    let followed = store.get_project_task(edited.id).await.unwrap().unwrap();
    assert_eq!(followed.status, WorkStatus::InReview);
    assert_eq!(
        followed.agent_execution_status.as_deref(),
        Some("completed")
    );
    assert_eq!(followed.updated_at, at);
    assert!(
        !store
            .follow_project_task(-1, WorkStatus::Todo, TaskState::Cancelled, at)
            .await
            .unwrap()
    );

    // Deleting one task, then the project with the rest and the executions.
    let audit = audited_on(kind::PROJECT_TASK_DELETED, "project_task", made[1].id);
    assert!(store.delete_project_task(made[1].id, audit).await.unwrap());
    assert!(store.get_project_task(made[1].id).await.unwrap().is_none());
    assert!(!store.delete_project_task(made[1].id, vec![]).await.unwrap());
    let audit = audited(kind::PROJECT_DELETED);
    assert!(store.delete_project(a.id, audit).await.unwrap());
    assert!(store.get_project(a.id).await.unwrap().is_none());
    assert!(
        store
            .list_project_tasks(Some(a.id), 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .list_project_tasks(None, 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // The executions went too: the engine task id is free again.
    let relinked = Execution {
        task_id: store
            .create_project_task(&ptask(b.id, "next"), vec![])
            .await
            .unwrap()
            .unwrap()
            .id,
        ..execution
    };
    store.create_execution(&relinked).await.unwrap();

    let q = AuditQuery {
        resource_type: Some("project_task".into()),
        limit: 10,
        ..Default::default()
    };
    let types: Vec<_> = store
        .audit_query(&q)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.event_type)
        .collect();
    assert_eq!(
        types,
        [
            kind::PROJECT_TASK_DELETED,
            kind::PROJECT_TASK_UPDATED,
            kind::PROJECT_TASK_CREATED,
            kind::PROJECT_TASK_CREATED,
            kind::PROJECT_TASK_CREATED,
        ]
    );
    assert!(verify_store(store.as_ref()).await.unwrap().ok);
}

/// Many tasks created at once in one project get the numbers 1..=n, each
/// once, and each creation's audit record is chained.
pub async fn project_task_numbers_unique_under_concurrency(store: Arc<dyn Store>) {
    let p = store
        .create_project(&project("RACE"), vec![])
        .await
        .unwrap();
    let numbers = create_concurrently(&[store.clone(), store.clone()], p.id, 24).await;
    assert_eq!(numbers, (1..=24).collect::<Vec<_>>());
    let v = verify_store(store.as_ref()).await.unwrap();
    assert!(v.ok, "{v:?}");
    assert_eq!(v.checked, 24);
}

/// Create `n` tasks in `project_id` at once, spread over `stores`, and
/// return their numbers, sorted.
async fn create_concurrently(stores: &[Arc<dyn Store>], project_id: i64, n: usize) -> Vec<i64> {
    let mut handles = Vec::new();
    for i in 0..n {
        let store = stores[i % stores.len()].clone();
        handles.push(tokio::spawn(async move {
            store
                .create_project_task(
                    &ptask(project_id, &format!("task {i}")),
                    audited(kind::PROJECT_TASK_CREATED),
                )
                .await
        }));
    }
    let mut numbers = Vec::new();
    for h in handles {
        let t = h.await.unwrap().unwrap().expect("the project exists");
        assert_eq!(t.key(), format!("{}-{}", t.project_key, t.number));
        numbers.push(t.number);
    }
    numbers.sort_unstable();
    numbers
}

/// Open a PostgreSQL store as a node does.
async fn open(url: &str) -> Arc<dyn Store> {
    switchboard::store::open(url, Arc::new(switchboard::bus::Bus::new()))
        .await
        .unwrap()
}

/// PostgreSQL only: two stores over one database, as two nodes have,
/// creating tasks in one project at the same time hand out every number
/// once; the keys are distinct and gapless.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_two_nodes_number_tasks_apart() {
    let Some(db) = crate::common::PgDb::create().await else {
        return;
    };
    let (a, b) = (open(&db.url).await, open(&db.url).await);
    let p = a.create_project(&project("TWO"), vec![]).await.unwrap();
    let numbers = create_concurrently(&[a.clone(), b.clone()], p.id, 40).await;
    assert_eq!(numbers, (1..=40).collect::<Vec<_>>());
    let keys: BTreeSet<_> = b
        .list_project_tasks(Some(p.id), 0, 100)
        .await
        .unwrap()
        .iter()
        .map(ProjectTask::key)
        .collect();
    assert_eq!(keys.len(), 40);
    assert!(keys.contains("TWO-1") && keys.contains("TWO-40"));
    assert!(verify_store(b.as_ref()).await.unwrap().ok);
}

/// PostgreSQL only: a database migrated before the Phase 1 migration
/// existed (0001 and 0003 applied) gets 0002 on the next start, keeps its
/// data, and serves projects.
#[tokio::test]
async fn postgres_phase1_migration_reaches_older_databases() {
    let Some(db) = crate::common::PgDb::create().await else {
        return;
    };
    // The migrations as released before Phase 1 on PostgreSQL.
    let old = tempfile::tempdir().unwrap();
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store/migrations/postgres");
    for name in ["0001_init.sql", "0003_security.sql"] {
        std::fs::copy(dir.join(name), old.path().join(name)).unwrap();
    }
    {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
        let migrator = sqlx::migrate::Migrator::new(old.path()).await.unwrap();
        migrator.run(&mut conn).await.unwrap();
        sqlx::query("INSERT INTO users (user_id, roles, grants, revokes, created_at) VALUES ('old', '[]', '[]', '[]', now())")
            .execute(&mut conn)
            .await
            .unwrap();
        let projects: Option<String> = sqlx::query_scalar("SELECT to_regclass('projects')::TEXT")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(projects, None, "no Phase 1 tables yet");
        conn.close().await.unwrap();
    }
    let store = open(&db.url).await;
    assert!(store.get_user("old").await.unwrap().is_some());
    let p = store.create_project(&project("OLD"), vec![]).await.unwrap();
    let t = store
        .create_project_task(&ptask(p.id, "after the upgrade"), vec![])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(t.key(), "OLD-1");
    // And a second start finds nothing left to do.
    drop(store);
    let again = open(&db.url).await;
    assert_eq!(again.get_project(p.id).await.unwrap(), Some(p));
}
