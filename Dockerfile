# Production image of one server node. Build: docker build -t chat-backend .
#
# The dependencies are installed in a stage of their own: `npm ci` with this project's
# postinstall, which applies `patches/` to them (patch-package, a dev dependency: a fix to
# postgres.js, see patches/README.md), then the dev dependencies are pruned and only
# node_modules is carried into the image.
FROM node:20-bookworm-slim AS deps
WORKDIR /app
COPY package.json package-lock.json ./
# The workspace manifests (npm workspaces: the protocol and the SDK packages) for npm ci.
COPY protocol/package.json ./protocol/
COPY client-sdk/package.json ./client-sdk/
COPY client-sdk/react/package.json ./client-sdk/react/
COPY patches ./patches
RUN npm ci --no-audit --no-fund && npm prune --omit=dev --no-audit --no-fund

FROM node:20-bookworm-slim
ENV NODE_ENV=production
WORKDIR /app
COPY package.json package-lock.json ./
COPY --from=deps /app/node_modules ./node_modules
COPY tsconfig.json ./
COPY protocol ./protocol
COPY server ./server
COPY drizzle ./drizzle
# The development assistant is imported by main.ts (started only outside production).
COPY assistant ./assistant
USER node
EXPOSE 3000
# node --import tsx (not the tsx CLI): signals reach the server directly, for a graceful stop.
CMD ["node", "--import", "tsx", "server/src/main.ts"]
