import React from 'react';
import Post from '../../components/Post';

export default () => <Post slug="alpha" next="beta" />;
