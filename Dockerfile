# Production image of one server node. Build: docker build -t chat-backend .
FROM node:20-bookworm-slim
ENV NODE_ENV=production
WORKDIR /app
COPY package.json package-lock.json ./
# The workspace manifests (npm workspaces: the protocol and the SDK packages) for npm ci.
COPY protocol/package.json ./protocol/
COPY client-sdk/package.json ./client-sdk/
COPY client-sdk/react/package.json ./client-sdk/react/
# Dev dependencies stay out; tsx (a runtime dependency) runs the TypeScript sources.
RUN npm ci --omit=dev --no-audit --no-fund --ignore-scripts
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
