PRAGMA foreign_keys=OFF;
BEGIN TRANSACTION;
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES('schema_version','1');
INSERT INTO meta VALUES('chain','agentguard-audit-v1');
CREATE TABLE events (
                 seq INTEGER PRIMARY KEY,
                 id TEXT NOT NULL,
                 time TEXT NOT NULL,
                 kind TEXT NOT NULL,
                 agent TEXT,
                 cgroup_path TEXT,
                 cgroup_id INTEGER,
                 pid INTEGER,
                 exe TEXT,
                 uid INTEGER,
                 gid INTEGER,
                 comm TEXT,
                 on_behalf_of TEXT,
                 intent TEXT,
                 src_ip TEXT,
                 src_port INTEGER,
                 dst_ip TEXT,
                 dst_port INTEGER,
                 sni TEXT,
                 host TEXT,
                 protocol TEXT,
                 method TEXT,
                 path TEXT,
                 tool TEXT,
                 rule TEXT,
                 decision TEXT,
                 reason TEXT,
                 credential_id TEXT,
                 token_jti TEXT,
                 policy_version TEXT,
                 status INTEGER,
                 bytes_in INTEGER,
                 bytes_out INTEGER,
                 duration_us INTEGER,
                 prev_hash TEXT NOT NULL,
                 hash TEXT NOT NULL
             );
INSERT INTO events VALUES(1,'01a23cdf-c301-758f-a8b5-8b5601f46805','2026-12-03T17:07:07.137759Z','daemon_start',NULL,NULL,NULL,5450,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,'agentguard 0.1.0 started: 1 agent(s), proxy port 43235',NULL,NULL,'28198fb545f26a55a2661eee9c350b80aa38f5605021c2301bb7073d29c19c06',NULL,NULL,NULL,NULL,'0000000000000000000000000000000000000000000000000000000000000000','cf1b799e82c3a7a39367b88a2ad28df7ace1a2800498835e0d8847eb77dbb8a1');
INSERT INTO events VALUES(2,'01a23cdf-cb0a-7b4a-972a-da6ca44e1908','2026-12-03T17:07:09.194092Z','kernel_refusal','fixture','agentguard-ae-fixture/fixture',2438,5609,'/usr/bin/curl',0,0,'curl',NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,'unix',NULL,'/var/run/nscd/socket',NULL,'kernel:unix-connect-denied','refuse','refused in the kernel (unix-connect-denied): unix socket /var/run/nscd/socket: it is not in agent.unix_sockets (type 1)',NULL,NULL,NULL,NULL,NULL,NULL,NULL,'cf1b799e82c3a7a39367b88a2ad28df7ace1a2800498835e0d8847eb77dbb8a1','e06e9bc7020bf0607c577aa86eb26f43941e32b6e6558761d860400ba4ec7431');
INSERT INTO events VALUES(3,'01a23cdf-cb0a-7ed8-acac-b30acf94e038','2026-12-03T17:07:09.194323Z','kernel_refusal','fixture','agentguard-ae-fixture/fixture',2438,5609,'/usr/bin/curl',0,0,'curl',NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,'unix',NULL,'/var/run/nscd/socket',NULL,'kernel:unix-connect-denied','refuse','refused in the kernel (unix-connect-denied): unix socket /var/run/nscd/socket: it is not in agent.unix_sockets (type 1)',NULL,NULL,NULL,NULL,NULL,NULL,NULL,'e06e9bc7020bf0607c577aa86eb26f43941e32b6e6558761d860400ba4ec7431','d56b1a85666710727fa994d5a54147075635fb192f3d633aea9990f7d8770fcb');
INSERT INTO events VALUES(4,'01a23cdf-cb0a-76db-895c-ce985401772c','2026-12-03T17:07:09.194975Z','connection','fixture','agentguard-ae-fixture/fixture',2438,5609,'/usr/bin/curl',0,0,'curl',NULL,NULL,'127.0.0.1',49942,'127.0.0.2',18931,NULL,NULL,'http',NULL,NULL,NULL,'intercept','intercept','intercept plain HTTP',NULL,NULL,'28198fb545f26a55a2661eee9c350b80aa38f5605021c2301bb7073d29c19c06',NULL,NULL,NULL,NULL,'d56b1a85666710727fa994d5a54147075635fb192f3d633aea9990f7d8770fcb','70437c1d288545bd3de5bf201c92c1c3309c808803af5343a09ab9db2f484493');
INSERT INTO events VALUES(5,'01a23cdf-cb0b-70f9-a154-d4c4d2af726e','2026-12-03T17:07:09.195603Z','request','fixture','agentguard-ae-fixture/fixture',2438,5609,'/usr/bin/curl',0,0,'curl',NULL,'fixture','127.0.0.1',49942,'127.0.0.2',18931,NULL,'127.0.0.2','HTTP/1.1','GET','/public/a?q=1','fixture.public','tool:fixture.public','allow','allowed by tool "fixture.public"',NULL,NULL,'28198fb545f26a55a2661eee9c350b80aa38f5605021c2301bb7073d29c19c06',404,0,335,16314,'70437c1d288545bd3de5bf201c92c1c3309c808803af5343a09ab9db2f484493','577592b0d701e4f86a86b7b9e1b240879fee320ff815d52fc326bb69af03eb15');
INSERT INTO events VALUES(6,'01a23cdf-cb7f-7ab7-aa03-3ee0a09d1660','2026-12-03T17:07:09.311709Z','connection','fixture','agentguard-ae-fixture/fixture',2438,5614,'/usr/bin/curl',0,0,'curl',NULL,NULL,'127.0.0.1',49958,'127.0.0.2',18931,NULL,NULL,'http',NULL,NULL,NULL,'intercept','intercept','intercept plain HTTP',NULL,NULL,'28198fb545f26a55a2661eee9c350b80aa38f5605021c2301bb7073d29c19c06',NULL,NULL,NULL,NULL,'577592b0d701e4f86a86b7b9e1b240879fee320ff815d52fc326bb69af03eb15','f85935ad2492a254ce80bf61c8c68146b8d448ebbe1a107f5639e6b702194263');
INSERT INTO events VALUES(7,'01a23cdf-cb80-7ee5-a825-bc9e50c4908c','2026-12-03T17:07:09.312006Z','request','fixture','agentguard-ae-fixture/fixture',2438,5614,'/usr/bin/curl',0,0,'curl',NULL,NULL,'127.0.0.1',49958,'127.0.0.2',18931,NULL,'127.0.0.2','HTTP/1.1','GET','/private',NULL,'default-deny','deny','no tool of agent "fixture" allows GET /private on 127.0.0.2',NULL,NULL,'28198fb545f26a55a2661eee9c350b80aa38f5605021c2301bb7073d29c19c06',403,0,113,180,'f85935ad2492a254ce80bf61c8c68146b8d448ebbe1a107f5639e6b702194263','666b7db6750b9093d4c4ef1c7ffdb978dce76eabb478773690cb4bfa0daaf997');
INSERT INTO events VALUES(8,'01a23cdf-cb80-77cf-935b-345efce378e6','2026-12-03T17:07:09.312426Z','kernel_refusal','fixture','agentguard-ae-fixture/fixture',2438,5614,'/usr/bin/curl',0,0,'curl',NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,'unix',NULL,'/var/run/nscd/socket',NULL,'kernel:unix-connect-denied','refuse','refused in the kernel (unix-connect-denied): unix socket /var/run/nscd/socket: it is not in agent.unix_sockets (type 1)',NULL,NULL,NULL,NULL,NULL,NULL,NULL,'666b7db6750b9093d4c4ef1c7ffdb978dce76eabb478773690cb4bfa0daaf997','9817ea58861c5c7002a8d84539e7d25a526d9a11c9d3f3af7f7d34b25a67f262');
INSERT INTO events VALUES(9,'01a23cdf-cb80-7835-aa2e-4e3a3f45e11d','2026-12-03T17:07:09.312469Z','kernel_refusal','fixture','agentguard-ae-fixture/fixture',2438,5614,'/usr/bin/curl',0,0,'curl',NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,'unix',NULL,'/var/run/nscd/socket',NULL,'kernel:unix-connect-denied','refuse','refused in the kernel (unix-connect-denied): unix socket /var/run/nscd/socket: it is not in agent.unix_sockets (type 1)',NULL,NULL,NULL,NULL,NULL,NULL,NULL,'9817ea58861c5c7002a8d84539e7d25a526d9a11c9d3f3af7f7d34b25a67f262','3a0422f371c573f3aff342b45a96a92742713bd2714f903d5b353498268a3493');
INSERT INTO events VALUES(10,'01a23cdf-d65c-7b99-b276-2ae063fba3b9','2026-12-03T17:07:12.092414Z','daemon_stop',NULL,NULL,NULL,5450,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,NULL,'stopped by SIGTERM',NULL,NULL,'28198fb545f26a55a2661eee9c350b80aa38f5605021c2301bb7073d29c19c06',NULL,NULL,NULL,NULL,'3a0422f371c573f3aff342b45a96a92742713bd2714f903d5b353498268a3493','ce68ab86779ece9a358069ab435740fd13d8732229cac33a4add7e2eb265cb12');
CREATE TABLE checkpoints (
                 seq INTEGER PRIMARY KEY,
                 hash TEXT NOT NULL,
                 time TEXT NOT NULL,
                 signature TEXT NOT NULL,
                 key_id TEXT NOT NULL
             );
INSERT INTO checkpoints VALUES(9,'3a0422f371c573f3aff342b45a96a92742713bd2714f903d5b353498268a3493','2026-12-03T17:07:09.402840Z','4d133dd76c29aaa7f003fcb6c4548ae45b2635096de4582daf2ca605e1b2fe6d5b8154494e1238f917eb90562b0b6bf2df9563cab7b66cebec7a6fd50a5dc909','c303d9e32a70f8130bf0a7619f6b6ce17e4b28d013c38ffe927af37b6af1b22a');
INSERT INTO checkpoints VALUES(10,'ce68ab86779ece9a358069ab435740fd13d8732229cac33a4add7e2eb265cb12','2026-12-03T17:07:12.093699Z','4958e11c707c62147d613c3acc20012b44561edc8663ade58a66b1eeb23b93470216b81164669584c039557baffb5958c3760534e96b0c3ccf151c026153e80c','c303d9e32a70f8130bf0a7619f6b6ce17e4b28d013c38ffe927af37b6af1b22a');
CREATE INDEX events_time ON events (time);
CREATE INDEX events_agent ON events (agent, seq);
CREATE INDEX events_decision ON events (decision, seq);
COMMIT;
