package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// devAgent is an `agent -dev` run in-process for a test, with a client of
// its embedded etcd to check what the commands did.
type devAgent struct {
	cli  func(string) string // the environment that points commands at it
	etcd *clientv3.Client
}

// startDevAgent starts `watchcache agent -dev` on free ports; it stops
// (and must exit 0) when the test ends.
func startDevAgent(t *testing.T) *devAgent {
	t.Helper()
	etcdAddr, httpAddr := freeAddr(t), freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	var agentOut, agentErr syncBuffer
	exited := make(chan int, 1)
	go func() {
		exited <- run(ctx, []string{"agent", "-dev", "-dev-etcd-addr", etcdAddr, "-http-addr", httpAddr, "-log-level", "error"},
			nil, &agentOut, &agentErr, env(nil))
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case code := <-exited:
			if code != exitOK {
				t.Errorf("agent: status %d, stderr:\n%s", code, agentErr.String())
			}
		case <-time.After(waitFor):
			t.Errorf("the agent did not stop within %v", waitFor)
		}
	})
	waitReady(t, httpAddr, exited, &agentErr)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{"http://" + etcdAddr}, DialTimeout: waitFor, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() }) // before the agent stops: cleanups run last first
	return &devAgent{cli: env(map[string]string{"WATCHCACHE_HTTP_ADDR": httpAddr}), etcd: cli}
}

// expect runs a command and checks its status, its stdout exactly and that
// its stderr contains wantStderr.
func (d *devAgent) expect(t *testing.T, stdin string, wantCode int, wantStdout, wantStderr string, args ...string) {
	t.Helper()
	code, stdout, stderr := runCmdIn(t, d.cli, stdin, args...)
	if code != wantCode || stdout != wantStdout || !strings.Contains(stderr, wantStderr) {
		t.Fatalf("watchcache %q: status %d, stdout %q, stderr %q\nwant status %d, stdout %q, stderr containing %q",
			args, code, stdout, stderr, wantCode, wantStdout, wantStderr)
	}
}

// etcdValue returns key's value in etcd, read directly, and whether it
// exists.
func (d *devAgent) etcdValue(t *testing.T, key string) (string, bool) {
	t.Helper()
	resp, err := d.etcd.Get(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return "", false
	}
	return string(resp.Kvs[0].Value), true
}

// etcdKeys returns every key in etcd.
func (d *devAgent) etcdKeys(t *testing.T) []string {
	t.Helper()
	resp, err := d.etcd.Get(context.Background(), "\x00", clientv3.WithFromKey(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, kv := range resp.Kvs {
		keys = append(keys, string(kv.Key))
	}
	return keys
}

// Every command sends the key exactly as typed, read back through etcd
// directly: a leading '/', '//', spaces, unicode and URL characters are
// all part of the key, for put, get, delete, watch and their recursive
// forms.
func TestCLIKeysAsTyped(t *testing.T) {
	d := startDevAgent(t)
	keys := []string{"/config/db", "config/db", "//double//slash", "a b", "ünïcødé/κλειδί", "100%", "100%25",
		"what?x=1&y", "a#b", "a+b", "trailing/", "dot/../dot", "./here", "-dash", "tab\there"}
	for _, key := range keys {
		d.expect(t, "", exitOK, "Success! Data written to: "+shown(key)+"\n", "", "kv", "put", "--", key, "v:"+key)
		if v, ok := d.etcdValue(t, key); !ok || v != "v:"+key {
			t.Fatalf("after kv put %q, etcd has %q (exists %v)", key, v, ok)
		}
		d.expect(t, "", exitOK, "v:"+key+"\n", "", "kv", "get", "--", key)
	}
	sorted := slices.Sorted(slices.Values(keys))
	if got := d.etcdKeys(t); !slices.Equal(got, sorted) {
		t.Fatalf("etcd keys %q, want exactly %q", got, sorted)
	}

	// Recursive forms: the prefix "/config/" is not "config/".
	d.expect(t, "", exitOK, "/config/db:v:/config/db\n", "", "kv", "get", "-recurse", "/config/")
	d.expect(t, "", exitOK, "/config/\n", "", "kv", "get", "-keys", "/con")
	stdout, _, stop := startWatch(t, d.cli, "-recurse", "/config/")
	if l := stdout.next(t); !strings.HasSuffix(l, " /config/db v:/config/db") {
		t.Fatalf("watch -recurse /config/: first line %q", l)
	}
	d.expect(t, "", exitOK, "Success! Data written to: config/other\n", "", "kv", "put", "config/other", "x")
	d.expect(t, "", exitOK, "Success! Data written to: /config/new\n", "", "kv", "put", "/config/new", "y")
	if l := stdout.next(t); !strings.HasSuffix(l, " /config/new y") {
		t.Fatalf("watch -recurse /config/ after writes to config/other and /config/new: %q", l)
	}
	if code := stop(); code != exitOK {
		t.Fatalf("watch: status %d", code)
	}

	// Deletes: the key typed, and only it.
	d.expect(t, "", exitOK, "Success! Deleted key: /config/db\n", "", "kv", "delete", "/config/db")
	if _, ok := d.etcdValue(t, "/config/db"); ok {
		t.Fatal("kv delete /config/db left /config/db")
	}
	if v, ok := d.etcdValue(t, "config/db"); !ok || v != "v:config/db" {
		t.Fatal("kv delete /config/db touched config/db")
	}
	d.expect(t, "", exitOK, "Success! Deleted keys with prefix: //double/\n", "", "kv", "delete", "-recurse", "//double/")
	if _, ok := d.etcdValue(t, "//double//slash"); ok {
		t.Fatal("kv delete -recurse //double/ left //double//slash")
	}
	for _, key := range []string{"a b", "100%", "-dash"} {
		d.expect(t, "", exitOK, "Success! Deleted key: "+key+"\n", "", "kv", "delete", "--", key)
		if _, ok := d.etcdValue(t, key); ok {
			t.Fatalf("kv delete %q left it", key)
		}
	}
	if v, ok := d.etcdValue(t, "100%25"); !ok || v != "v:100%25" {
		t.Fatal(`kv delete "100%" touched "100%25"`)
	}

	// A key the agent cannot take is an error that names it.
	d.expect(t, "", exitError, "", `Error! writing "bad\xffkey": the agent answered 400 Bad Request: bad key: is not valid UTF-8`, "kv", "put", "bad\xffkey", "v")
}

// kv put's value sources (literal, @FILE, -, none) and -base64; kv get's
// -base64, -detailed, -keys, -recurse without a key, -format json, and
// quoting in line output; flags after the arguments.
func TestCLIValues(t *testing.T) {
	d := startDevAgent(t)
	file := filepath.Join(t.TempDir(), "value")
	if err := os.WriteFile(file, []byte("from a file\nline 2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	binary := []byte{0, 1, 2, 0xff, '\n'}
	for _, tc := range []struct {
		stdin string
		args  []string
		key   string
		want  string
	}{
		{"", []string{"app/literal", "a literal: value?"}, "app/literal", "a literal: value?"},
		{"", []string{"app/file", "@" + file}, "app/file", "from a file\nline 2\n"},
		{"from stdin", []string{"app/stdin", "-"}, "app/stdin", "from stdin"},
		{"", []string{"app/empty"}, "app/empty", ""},
		{"", []string{"-base64", "app/binary", base64.StdEncoding.EncodeToString(binary)}, "app/binary", string(binary)},
		{base64.StdEncoding.EncodeToString([]byte("@at")) + "\n", []string{"app/at", "-", "-base64"}, "app/at", "@at"},
	} {
		d.expect(t, tc.stdin, exitOK, "Success! Data written to: "+tc.key+"\n", "", append([]string{"kv", "put"}, tc.args...)...)
		if v, ok := d.etcdValue(t, tc.key); !ok || v != tc.want {
			t.Fatalf("kv put %q: etcd has %q (exists %v), want %q", tc.args, v, ok, tc.want)
		}
	}
	d.expect(t, "", exitError, "", "Error! app/x: open /nonexistent: no such file", "kv", "put", "app/x", "@/nonexistent")
	d.expect(t, "", exitError, "", "-base64: the value is not base64", "kv", "put", "-base64", "app/x", "%%%")

	d.expect(t, "", exitOK, "from a file\nline 2\n\n", "", "kv", "get", "app/file")
	d.expect(t, "", exitOK, base64.StdEncoding.EncodeToString(binary)+"\n", "", "kv", "get", "app/binary", "-base64")
	d.expect(t, "", exitOK, `app/at:@at
app/binary:"\x00\x01\x02\xff\n"
app/empty:
app/file:"from a file\nline 2\n"
app/literal:a literal: value?
app/stdin:from stdin
`, "", "kv", "get", "-recurse")
	d.expect(t, "", exitOK, "app/\n", "", "kv", "get", "-keys")
	d.expect(t, "", exitOK, "app/at\napp/binary\napp/empty\napp/file\napp/literal\napp/stdin\n", "", "kv", "get", "app/", "-keys", "-separator", "")

	resp, err := d.etcd.Get(context.Background(), "app/stdin")
	if err != nil {
		t.Fatal(err)
	}
	kv := resp.Kvs[0]
	d.expect(t, "", exitOK, "CreateIndex      "+strconv.FormatInt(kv.CreateRevision, 10)+"\n"+
		"Flags            0\n"+
		"Key              app/stdin\n"+
		"LockIndex        0\n"+
		"ModifyIndex      "+strconv.FormatInt(kv.ModRevision, 10)+"\n"+
		"Session          -\n"+
		"Value            from stdin\n", "", "kv", "get", "app/stdin", "-detailed")

	_, stdout, _ := runCmdIn(t, d.cli, "", "kv", "get", "-recurse", "-format", "json", "app/")
	lines := strings.Split(strings.TrimSuffix(stdout, "\n"), "\n")
	if len(lines) != 6 {
		t.Fatalf("-format json: %d lines, want 6:\n%s", len(lines), stdout)
	}
	var got jsonPair
	if err := json.Unmarshal([]byte(lines[1]), &got); err != nil || got.Key != "app/binary" || string(got.Value) != string(binary) || got.ModifyIndex == 0 {
		t.Fatalf("-format json line %q: %+v, %v", lines[1], got, err)
	}
	d.expect(t, "", exitOK, `{"key":"app/"}`+"\n", "", "kv", "get", "-keys", "-format", "json")
}

// modifyIndex returns key's ModifyIndex as kv get -detailed prints it.
func (d *devAgent) modifyIndex(t *testing.T, key string) string {
	t.Helper()
	code, stdout, stderr := runCmd(t, d.cli, "kv", "get", "-detailed", key)
	if code != exitOK {
		t.Fatalf("kv get -detailed %s: status %d: %s", key, code, stderr)
	}
	for _, l := range strings.Split(stdout, "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == "ModifyIndex" {
			return f[1]
		}
	}
	t.Fatalf("kv get -detailed %s printed no ModifyIndex:\n%s", key, stdout)
	return ""
}

// kv put -cas and kv delete -cas: the write happens only at the expected
// ModifyIndex, and a failed one is exit status 1 with a message.
func TestCLICompareAndSwap(t *testing.T) {
	d := startDevAgent(t)
	d.expect(t, "", exitOK, "Success! Data written to: /lock\n", "", "kv", "put", "-cas", "-modify-index", "0", "/lock", "one")
	d.expect(t, "", exitError, "", "Error! Did not write to /lock: CAS failed (its ModifyIndex is not 0)", "kv", "put", "-cas", "-modify-index", "0", "/lock", "two")
	idx := d.modifyIndex(t, "/lock")
	d.expect(t, "", exitOK, "Success! Data written to: /lock\n", "", "kv", "put", "/lock", "three", "-cas", "-modify-index", idx)
	d.expect(t, "", exitError, "", "CAS failed", "kv", "put", "-cas", "-modify-index", idx, "/lock", "four")
	if v, _ := d.etcdValue(t, "/lock"); v != "three" {
		t.Fatalf("after the CAS writes, /lock = %q, want three", v)
	}
	d.expect(t, "", exitError, "", "Error! Did not delete key /lock: CAS failed (its ModifyIndex is not "+idx+")", "kv", "delete", "-cas", "-modify-index", idx, "/lock")
	if _, ok := d.etcdValue(t, "/lock"); !ok {
		t.Fatal("a failed CAS delete deleted /lock")
	}
	d.expect(t, "", exitOK, "Success! Deleted key: /lock\n", "", "kv", "delete", "-cas", "-modify-index", d.modifyIndex(t, "/lock"), "/lock")
	if _, ok := d.etcdValue(t, "/lock"); ok {
		t.Fatal("a CAS delete at the right index left /lock")
	}
}

// kv export writes consul kv export's format; kv import reads it back,
// from a file, standard input or the argument, including a file written
// by consul itself; a bad entry imports nothing.
func TestCLIExportImport(t *testing.T) {
	d := startDevAgent(t)
	binary := string([]byte{0, 0xff, '\n'})
	for key, value := range map[string]string{"/app/db": "postgres", "/app/bin": binary, "/app/empty": "", "other": "x"} {
		if _, err := d.etcd.Put(context.Background(), key, value); err != nil {
			t.Fatal(err)
		}
	}
	code, export, stderr := runCmd(t, d.cli, "kv", "export", "/app/")
	if code != exitOK {
		t.Fatalf("kv export: status %d: %s", code, stderr)
	}
	want := "[\n\t{\n\t\t\"key\": \"/app/bin\",\n\t\t\"flags\": 0,\n\t\t\"value\": \"" + base64.StdEncoding.EncodeToString([]byte(binary)) + "\"\n\t},\n" +
		"\t{\n\t\t\"key\": \"/app/db\",\n\t\t\"flags\": 0,\n\t\t\"value\": \"cG9zdGdyZXM=\"\n\t},\n" +
		"\t{\n\t\t\"key\": \"/app/empty\",\n\t\t\"flags\": 0,\n\t\t\"value\": \"\"\n\t}\n]\n"
	if export != want {
		t.Fatalf("kv export:\n%s\nwant:\n%s", export, want)
	}

	file := filepath.Join(t.TempDir(), "export.json")
	if err := os.WriteFile(file, []byte(export), 0o600); err != nil {
		t.Fatal(err)
	}
	d.expect(t, "", exitOK, "Imported: copy/app/bin\nImported: copy/app/db\nImported: copy/app/empty\n", "", "kv", "import", "-prefix", "copy", "@"+file)
	d.expect(t, export, exitOK, "Imported: stdin/app/bin\nImported: stdin/app/db\nImported: stdin/app/empty\n", "", "kv", "import", "-prefix", "stdin")
	for _, prefix := range []string{"copy", "stdin"} {
		for key, value := range map[string]string{"/app/db": "postgres", "/app/bin": binary, "/app/empty": ""} {
			if v, ok := d.etcdValue(t, prefix+key); !ok || v != value {
				t.Fatalf("after import, %s = %q (exists %v), want %q", prefix+key, v, ok, value)
			}
		}
	}

	// As consul kv export writes it (keys without a leading slash).
	consulExport := `[
	{
		"key": "svc/web/port",
		"flags": 0,
		"value": "ODA4MA=="
	},
	{
		"key": "svc/web/tags",
		"flags": 0,
		"value": "YSxi"
	}
]`
	d.expect(t, "", exitOK, "Imported: svc/web/port\nImported: svc/web/tags\n", "", "kv", "import", consulExport)
	if v, _ := d.etcdValue(t, "svc/web/port"); v != "8080" {
		t.Fatalf("svc/web/port = %q after importing consul's export", v)
	}

	for _, tc := range []struct{ data, want string }{
		{`[{"key": "bad/1", "flags": 0, "value": "dg=="}, {"key": "bad/2", "flags": 3, "value": "dg=="}]`, `entry 1 ("bad/2"): flags 3`},
		{`[{"key": "bad/1", "flags": 0, "value": "dg=="}, {"key": "bad/2", "flags": 0, "value": "%%"}]`, `entry 1 ("bad/2"): the value is not base64`},
		{`[{"key": "bad/1", "flags": 0, "value": "dg=="}, {"flags": 0, "value": "dg=="}]`, `entry 1 has no key`},
		{`{"key": "bad/1"}`, `the input is not a kv export`},
	} {
		d.expect(t, "", exitError, "", tc.want, "kv", "import", tc.data)
		if _, ok := d.etcdValue(t, "bad/1"); ok {
			t.Fatalf("a bad import (%s) wrote bad/1", tc.want)
		}
	}
}

// watch -format json prints one JSON object per change; -prefix is
// -recurse.
func TestCLIWatchJSON(t *testing.T) {
	d := startDevAgent(t)
	d.expect(t, "", exitOK, "Success! Data written to: /w/0\n", "", "kv", "put", "/w/0", "")
	stdout, _, stop := startWatch(t, d.cli, "/w/", "-prefix", "-format", "json")
	var first watchJSON
	if err := json.Unmarshal([]byte(stdout.next(t)), &first); err != nil || first.Key == nil || *first.Key != "/w/0" || first.Value == nil || len(*first.Value) != 0 {
		t.Fatalf("first line (the current key): %+v, %v", first, err)
	}
	// Each change is awaited before the next: changes made in a burst may
	// reach a watcher as one (the cache delivers the latest state), and a
	// put and delete of the same key would cancel out.
	d.expect(t, "", exitOK, "Success! Data written to: /w/a\n", "", "kv", "put", "/w/a", "1")
	var put, del watchJSON
	if err := json.Unmarshal([]byte(stdout.next(t)), &put); err != nil || put.Key == nil || *put.Key != "/w/a" || put.Value == nil || string(*put.Value) != "1" || put.ModifyIndex == 0 {
		t.Fatalf("put line: %+v, %v", put, err)
	}
	d.expect(t, "", exitOK, "Success! Deleted key: /w/a\n", "", "kv", "delete", "/w/a")
	if err := json.Unmarshal([]byte(stdout.next(t)), &del); err != nil || del.Key == nil || *del.Key != "/w/a" || !del.Deleted || del.Value != nil || del.Index <= put.Index {
		t.Fatalf("delete line: %+v, %v", del, err)
	}
	if code := stop(); code != exitOK {
		t.Fatalf("watch: status %d", code)
	}
}
