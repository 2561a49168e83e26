package agent

import (
	"testing"

	"github.com/hashicorp/consul/api"
)

// The consul/api KV client works against the agent: Put, Get, List, Keys,
// CAS, Delete, DeleteCAS, DeleteTree.
func TestConsulKV(t *testing.T) {
	ta := startAgent(t)
	kv := ta.consul(t).KV()
	ctx := testCtx(t)
	q := (&api.QueryOptions{}).WithContext(ctx)
	w := (&api.WriteOptions{}).WithContext(ctx)

	if _, err := kv.Put(&api.KVPair{Key: "app/db", Value: []byte("postgres")}, w); err != nil {
		t.Fatal(err)
	}
	pair, meta, err := kv.Get("app/db", q)
	if err != nil || pair == nil || string(pair.Value) != "postgres" || pair.ModifyIndex == 0 || meta.LastIndex != pair.ModifyIndex {
		t.Fatalf("Get = %+v %+v %v", pair, meta, err)
	}
	if missing, meta, err := kv.Get("app/none", q); err != nil || missing != nil || meta.LastIndex == 0 {
		t.Fatalf("Get of a missing key = %+v %+v %v, want nil with an index", missing, meta, err)
	}
	kv.Put(&api.KVPair{Key: "app/web/port", Value: []byte("80")}, w)
	kv.Put(&api.KVPair{Key: "app/web/host", Value: []byte("h")}, w)
	pairs, _, err := kv.List("app/", q)
	if err != nil || len(pairs) != 3 || pairs[0].Key != "app/db" {
		t.Fatalf("List = %+v %v", pairs, err)
	}
	keys, _, err := kv.Keys("app/", "/", q)
	if err != nil || len(keys) != 2 || keys[0] != "app/db" || keys[1] != "app/web/" {
		t.Fatalf("Keys = %v %v", keys, err)
	}

	pair, _, _ = kv.Get("app/db", q)
	ok, _, err := kv.CAS(&api.KVPair{Key: "app/db", Value: []byte("mysql"), ModifyIndex: pair.ModifyIndex - 1}, w)
	if err != nil || ok {
		t.Fatalf("CAS with a stale index = %v %v, want false", ok, err)
	}
	ok, _, err = kv.CAS(&api.KVPair{Key: "app/db", Value: []byte("mysql"), ModifyIndex: pair.ModifyIndex}, w)
	if err != nil || !ok {
		t.Fatalf("CAS = %v %v, want true", ok, err)
	}
	if pair, _, _ := kv.Get("app/db", q); string(pair.Value) != "mysql" {
		t.Fatalf("after CAS, Get = %q: read-your-writes broken", pair.Value)
	}
	ok, _, err = kv.CAS(&api.KVPair{Key: "app/new", Value: []byte("x"), ModifyIndex: 0}, w)
	if err != nil || !ok {
		t.Fatalf("CAS 0 on a missing key = %v %v, want true", ok, err)
	}
	pair, _, _ = kv.Get("app/new", q)
	if ok, _, err := kv.DeleteCAS(&api.KVPair{Key: "app/new", ModifyIndex: pair.ModifyIndex + 1}, w); err != nil || ok {
		t.Fatalf("DeleteCAS with a wrong index = %v %v", ok, err)
	}
	if ok, _, err := kv.DeleteCAS(&api.KVPair{Key: "app/new", ModifyIndex: pair.ModifyIndex}, w); err != nil || !ok {
		t.Fatalf("DeleteCAS = %v %v", ok, err)
	}
	if p, _, _ := kv.Get("app/new", q); p != nil {
		t.Fatalf("after DeleteCAS, Get = %+v", p)
	}
	if _, err := kv.Delete("app/db", w); err != nil {
		t.Fatal(err)
	}
	if p, _, _ := kv.Get("app/db", q); p != nil {
		t.Fatalf("after Delete, Get = %+v", p)
	}
	if _, err := kv.DeleteTree("app/", w); err != nil {
		t.Fatal(err)
	}
	if pairs, _, _ := kv.List("app/", q); len(pairs) != 0 {
		t.Fatalf("after DeleteTree, List = %+v", pairs)
	}
}
