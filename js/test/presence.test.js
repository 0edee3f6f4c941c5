// The pure presence helper: joins and leaves applied to a snapshot.
import { test } from "node:test";
import assert from "node:assert/strict";

import { applyPresence, presenceUsers } from "../backchannel.js";

const alice = { client: "c1", user: "alice" };
const alice2 = { client: "c2", user: "alice", info: { tab: 2 } };
const bob = { client: "c3", user: "bob" };

test("joins add, leaves remove, in the order received; the snapshot is left as it is", () => {
  const snapshot = { c1: alice };
  const now = applyPresence(snapshot, [
    { type: "join", info: bob },
    { type: "join", info: alice2 },
    { type: "leave", info: alice },
  ]);
  assert.deepEqual(now, { c3: bob, c2: alice2 });
  assert.deepEqual(snapshot, { c1: alice }, "not changed");
  assert.deepEqual(presenceUsers(now), ["alice", "bob"]);
});

test("a join of a client already there replaces its info; a leave of one not there changes nothing", () => {
  const now = applyPresence({ c2: { client: "c2", user: "alice" } }, [
    { type: "join", info: alice2 },
    { type: "leave", info: bob },
    { type: "leave", info: { user: "no client id" } },
  ]);
  assert.deepEqual(now, { c2: alice2 });
});

test("a leave then a join of the same client (a reconnect) leaves it present", () => {
  assert.deepEqual(applyPresence({ c1: alice }, [{ type: "leave", info: alice }, { type: "join", info: alice }]), { c1: alice });
  assert.deepEqual(presenceUsers({}), []);
  assert.deepEqual(presenceUsers({ c1: alice, c2: alice2 }), ["alice"], "a user once, whatever its connections");
});
