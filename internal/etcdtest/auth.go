package etcdtest

import (
	"context"
	"fmt"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Perm is the access a Role grants to the keys under its prefix. The zero
// value is PermRead, the least privilege.
type Perm int

// The kinds of access a Role can grant.
const (
	PermRead      Perm = iota // read and watch
	PermWrite                 // put and delete
	PermReadWrite             // both
)

// String returns the name etcdctl uses for p.
func (p Perm) String() string {
	switch p {
	case PermRead:
		return "read"
	case PermWrite:
		return "write"
	case PermReadWrite:
		return "readwrite"
	default:
		return fmt.Sprintf("Perm(%d)", int(p))
	}
}

func (p Perm) permissionType() (clientv3.PermissionType, error) {
	switch p {
	case PermRead:
		return clientv3.PermissionType(clientv3.PermRead), nil
	case PermWrite:
		return clientv3.PermissionType(clientv3.PermWrite), nil
	case PermReadWrite:
		return clientv3.PermissionType(clientv3.PermReadWrite), nil
	default:
		return 0, fmt.Errorf("unknown permission %v", p)
	}
}

// Role is an etcd role that grants Perm on every key that starts with
// Prefix. An empty Prefix means every key.
type Role struct {
	Name   string
	Prefix string
	Perm   Perm
}

// User is an etcd user with a password and roles. Roles that several users
// share are created once; listing the same role name with different
// prefixes grants all of them.
type User struct {
	Name     string
	Password string
	Roles    []Role
}

// EnableAuth turns on authentication: it creates the root user (RootUser,
// RootPassword) the first time, the roles and users given, grants the roles,
// and enables auth. From then on anonymous requests are rejected, including
// those of clients made before; clients need WithCredentials. It may be
// called again to add users (auth stays on). Compact and CompactLatest keep
// working, as the harness then uses the root user.
func (c *Cluster) EnableAuth(t testing.TB, users []User) {
	t.Helper()
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("etcdtest: EnableAuth: "+format, args...)
	}
	cli, err := c.rootClient()
	if err != nil {
		fail("%v", err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()

	c.mu.Lock()
	enabled := c.authEnabled
	c.mu.Unlock()
	if !enabled {
		// etcd refuses to enable auth unless a user "root" with the
		// built-in role "root" exists.
		if _, err := cli.UserAdd(ctx, RootUser, RootPassword); err != nil {
			fail("adding user %s: %v", RootUser, err)
		}
		if _, err := cli.UserGrantRole(ctx, RootUser, "root"); err != nil {
			fail("granting role root to %s: %v", RootUser, err)
		}
	}

	roles := map[string]bool{}
	for _, u := range users {
		for _, r := range u.Roles {
			if !roles[r.Name] {
				if _, err := cli.RoleAdd(ctx, r.Name); err != nil {
					fail("adding role %s: %v", r.Name, err)
				}
				roles[r.Name] = true
			}
			perm, err := r.Perm.permissionType()
			if err != nil {
				fail("role %s: %v", r.Name, err)
			}
			key, end := r.Prefix, clientv3.GetPrefixRangeEnd(r.Prefix)
			if key == "" {
				// etcd rejects an empty key; the range ["\x00", "\x00")
				// is its spelling of "every key" (as etcdctl's --prefix
				// with an empty key).
				key, end = "\x00", "\x00"
			}
			if _, err := cli.RoleGrantPermission(ctx, r.Name, key, end, perm); err != nil {
				fail("granting %v on prefix %q to role %s: %v", r.Perm, r.Prefix, r.Name, err)
			}
		}
	}
	for _, u := range users {
		if _, err := cli.UserAdd(ctx, u.Name, u.Password); err != nil {
			fail("adding user %s: %v", u.Name, err)
		}
		for _, r := range u.Roles {
			if _, err := cli.UserGrantRole(ctx, u.Name, r.Name); err != nil {
				fail("granting role %s to user %s: %v", r.Name, u.Name, err)
			}
		}
	}

	if _, err := cli.AuthEnable(ctx); err != nil {
		fail("%v", err)
	}
	c.mu.Lock()
	c.authEnabled = true
	c.mu.Unlock()
}
