package agent

import (
	"context"
	"net/http"
	"strings"

	"github.com/watchcache/watchcache"
	"github.com/watchcache/watchcache/kvstore"
)

// identity returns the cache partition of the caller: HTTP basic auth
// (consul/api's HttpAuth), or a token, as the store verifies them. The
// token is taken as Consul takes it: ?token= first, then X-Consul-Token,
// then an Authorization header of scheme Bearer. A request without
// credentials is the store's own identity. Refused credentials are an
// error: such a request never reaches the cache.
func (a *Agent) identity(ctx context.Context, r *http.Request, queryToken string) (p watchcache.Partition, err error) {
	defer func() {
		if err == nil {
			a.identify(r, p)
		}
	}()
	token := queryToken
	if token == "" {
		token = r.Header.Get("X-Consul-Token")
	}
	if token == "" {
		if scheme, value, ok := strings.Cut(r.Header.Get("Authorization"), " "); ok && strings.EqualFold(scheme, "bearer") {
			token = strings.TrimSpace(value)
		}
	}
	user, password, basic := r.BasicAuth()
	switch {
	case basic && token != "":
		return watchcache.Partition{}, badf("credentials", "both basic auth and a token were given; use one")
	case basic:
		return a.store.Identify(ctx, kvstore.Credentials{User: user, Password: password})
	case token != "":
		return a.store.Identify(ctx, kvstore.Credentials{Token: token})
	}
	return a.store.Identify(ctx, kvstore.Credentials{})
}
